// Unit test of web/infinity_models.js (the loaders' status line): node --test. With INFINITY_MODEL_FILES (the
// payload of GET /infinity/model_files, written by tests/test_nodes_first_run.py), every official file is checked.
import assert from "node:assert/strict";
import fs from "node:fs";
import { test } from "node:test";

const source = fs.readFileSync(new URL("../../web/infinity_models.js", import.meta.url), "utf8");
const { describeModelFile } = await import(`data:text/javascript;base64,${Buffer.from(source).toString("base64")}`);

const FILES = [
  { name: "a.pth", folder: "infinity", present: true, size: "4.4 GB", source: "huggingface.co/x/y", into: "/m/infinity" },
  { name: "b.pth", folder: "infinity", present: false, size: "0.4 GB", source: "huggingface.co/x/y", into: "/m/infinity" },
];

test("present, downloaded on run, or a warning; nothing for other files", () => {
  assert.deepEqual(describeModelFile(FILES, "a.pth", false), { text: "✓ official file, in models/infinity", warn: false });
  assert.deepEqual(describeModelFile(FILES, "b.pth", true),
                   { text: "⬇ downloads on run: about 0.4 GB from huggingface.co/x/y", warn: false });
  const off = describeModelFile(FILES, "b.pth", false);
  assert.equal(off.warn, true);
  assert.match(off.text, /turn on download_missing.*\/m\/infinity$/);
  assert.deepEqual(describeModelFile(FILES, "mine.pth", true), { text: "", warn: false });
  assert.deepEqual(describeModelFile(null, "a.pth", true), { text: "", warn: false });
});

const payload = process.env.INFINITY_MODEL_FILES;
test("every file of the real route payload", { skip: !payload && "no INFINITY_MODEL_FILES" }, () => {
  const files = JSON.parse(fs.readFileSync(payload, "utf8"));
  assert.ok(files.length >= 6);
  for (const f of files) {
    const on = describeModelFile(files, f.name, true), off = describeModelFile(files, f.name, false);
    if (f.present) {
      assert.equal(on.text, off.text);
      assert.match(on.text, /^✓/);
    } else {
      assert.ok(on.text.includes(f.size) && on.text.includes(f.source) && !on.warn, f.name);
      assert.ok(off.warn && off.text.includes(f.into), f.name);
    }
  }
});
