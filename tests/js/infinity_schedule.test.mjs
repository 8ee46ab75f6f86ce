// Unit test of web/infinity_schedule.js (the size snapping the web extension shows): node --test.
// With INFINITY_SCHEDULE_CASES (a JSON file written by tests/test_workflows.py from infinity_core.schedules),
// every case must match the Python core exactly; the small cases below run on their own too.
import assert from "node:assert/strict";
import fs from "node:fs";
import { test } from "node:test";

// Imported from source through a data: URL, so no package.json ("type": "module") is needed in web/.
const source = fs.readFileSync(new URL("../../web/infinity_schedule.js", import.meta.url), "utf8");
const { snapSize, formatSize, budgetScales, describeEncode, templateSpan } = await import(
  `data:text/javascript;base64,${Buffer.from(source).toString("base64")}`);

const TABLES = {  // two templates (1M grids truncated to 4 scales) and the real limits
  templates: [
    [1.0, [[1, 1], [2, 2], [4, 4], [6, 6]]],
    [1.25, [[1, 1], [2, 2], [3, 3], [5, 4]]],
    [0.8, [[1, 1], [2, 2], [3, 3], [4, 5]]],
  ],
  budgets: [["tiny", 2], ["small", 4]],
  min_side: 72, max_side: 3552, max_aspect: 4.0, vae_stride: 16,
};

test("snaps to the nearest template and counts the tokens of the budget's scales", () => {
  const r = snapSize(TABLES, 1000, 1240, "small");
  assert.deepEqual(r, { ok: true, width: 64, height: 80, template: 1.25, budget: "small", auto: false, scales: 4,
                        tokens: 1 + 4 + 9 + 20, grid: [5, 4], snapped: true });
  assert.equal(formatSize(r), "→ 64×80 · template 1.25 · 34 tokens · 4 scales");
  assert.equal(snapSize(TABLES, 500, 400, "tiny").template, 0.8);
  assert.equal(budgetScales(TABLES, "tiny"), 2);
});

test("a tie goes to the first template (Python's min)", () => {
  // h/w = 1.125 is exactly between 1.0 and 1.25
  assert.equal(snapSize(TABLES, 800, 900, "small").template, 1.0);
});

test("refuses sizes and aspects the core refuses", () => {
  assert.equal(snapSize(TABLES, 71, 1024, "small").ok, false);
  assert.equal(snapSize(TABLES, 3553, 1024, "small").ok, false);
  assert.equal(snapSize(TABLES, 3552, 72, "small").ok, false);   // aspect 49:1
  assert.equal(snapSize(TABLES, 1024, 1024, "huge").ok, false);  // unknown budget
  assert.equal(snapSize(TABLES, "", 1024, "small").ok, false);
  assert.match(formatSize(snapSize(TABLES, 5, 1024, "small")), /^⚠ 5×1024/);
});

test("the aspect error states the real limit and the templates' span", () => {
  const real = { ...TABLES, templates: [[1.0, [[1, 1]]], [3.0, [[3, 1]]], [0.333, [[1, 3]]], [2.0, [[2, 1]]]] };
  assert.equal(templateSpan(real), "1:3 to 3:1");
  assert.equal(snapSize(real, 800, 3120, "small").template, 3.0);  // 1:3.9 is accepted (snapped to 1:3) ...
  assert.match(formatSize(snapSize(real, 800, 3300, "small")), /beyond 4:1 \(templates: 1:3 to 3:1\)$/);  // ... 1:4.1 not
});

test("Infinity Encode: both 0 = the image's aspect, only one 0 = a warning, else the snapped size", () => {
  assert.deepEqual(describeEncode(TABLES, 0, 0, "small"),
                   { text: "→ the image's own aspect · budget small · 4 scales", warn: false });
  const widthOnly = describeEncode(TABLES, 512, 0, "small");
  assert.equal(widthOnly.warn, true);
  assert.match(widthOnly.text, /^⚠ set height too/);
  assert.match(describeEncode(TABLES, 0, 512, "small").text, /^⚠ set width too/);
  assert.deepEqual(describeEncode(TABLES, 1000, 1240, "small"),
                   { text: formatSize(snapSize(TABLES, 1000, 1240, "small")), warn: false });
});

test("budget auto: the budget nearest in pixels, named in the text", () => {
  const small = { ...TABLES, min_side: 16 };
  const r = snapSize(small, 60, 60, "auto");  // 1:1, 3600 px: "tiny" gives 32x32 = 1024, "small" 96x96 = 9216
  assert.equal(r.budget, "tiny");
  assert.equal(r.scales, 2);
  assert.equal(snapSize(small, 80, 80, "auto").budget, "small");  // 6400 px: |1024-6400| > |9216-6400|
  assert.match(formatSize(snapSize(small, 80, 80, "auto")), / · auto: small$/);
  assert.equal(describeEncode(TABLES, 0, 0, "auto").text, "→ the image's own aspect · budget auto: nearest to the image's size");
});

const casesFile = process.env.INFINITY_SCHEDULE_CASES;
test("matches infinity_core.schedules.schedule_for_size on every case", { skip: !casesFile && "no INFINITY_SCHEDULE_CASES" }, () => {
  const { tables, cases } = JSON.parse(fs.readFileSync(casesFile, "utf8"));
  assert.ok(cases.length > 100);
  for (const c of cases) {
    const r = snapSize(tables, c.width, c.height, c.budget);
    const where = `${c.width}x${c.height} ${c.budget}`;
    assert.equal(r.ok, c.ok, where);
    if (!c.ok) continue;
    assert.deepEqual([r.width, r.height, r.template, r.tokens, r.scales],
                     [c.out_width, c.out_height, c.template, c.tokens, c.scales], where);
    assert.equal(formatSize(r), c.text, where);
  }
});
