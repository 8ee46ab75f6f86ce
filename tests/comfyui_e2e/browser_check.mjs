// The pack's example workflows in the real ComfyUI frontend (headless Debian chromium + playwright-core).
//
//   NODE_PATH=<dir with playwright-core> node browser_check.mjs --url http://127.0.0.1:PORT --module ComfyUI-Infinity \
//       --out report.json [--queue] [--fast] [--screenshots DIR] [--probe] [--chromium /usr/bin/chromium]
//       [--viewport 1600x900] [--template-dialog] [--dialogs-allowed] [--vue-nodes]
//
// For every template the server lists for --module (GET /api/workflow_templates): fetch it and load it the
// way the template browser does (app.loadGraphData(json, true, true, name)), check that every node type is
// known and no node is marked with errors, optionally screenshot the graph, optionally (--fast) shrink the
// run through the frontend's own widgets (budget 0.06M, tiled decode at the smallest tile), convert with
// app.graphToPrompt() and (--queue) queue it through the frontend's api.queuePrompt. --probe changes the
// width/height/budget widgets of an Infinity Sampler like a user and records the size preview it shows.
// --template-dialog opens the frontend's template browser, picks the pack and clicks the first template's card.
// --dialogs-allowed: a Missing Models dialog is fine (models absent on purpose) unless an entry's button is disabled.
// --vue-nodes: Nodes 2.0 (the setting Comfy.VueNodes.Enabled; frontends that have it), else the classic canvas.
// The pack's text lines are read twice: the widget's value and the text the page shows for that node.
// Writes a JSON report (prompt ids, API prompts, probe texts, page/console errors); exit 1 on a failed step.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE_DIR
  ? path.join(process.env.PLAYWRIGHT_CORE_DIR, "playwright-core") : "playwright-core");

const argv = process.argv.slice(2);
const opt = (name, fallback) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : fallback; };
const flag = (name) => argv.includes(`--${name}`);
const url = opt("url");
const moduleName = opt("module", "ComfyUI-Infinity");
const shots = opt("screenshots");
const report = { url, module: moduleName, templates: [], workflows: [], probe: [], page_errors: [],
                 console_errors: [], ignored_console: [], failed_requests: [], ok: false };

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "infinity-e2e-chromium-"));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: opt("chromium", process.env.CHROMIUM || "/usr/bin/chromium"),
  headless: true,
  viewport: { width: Number(opt("viewport", "1600x900").split("x")[0]), height: Number(opt("viewport", "1600x900").split("x")[1]) },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function settle(page, ms = 300) {
  await page.evaluate(() => window.app.canvas.draw(true, true));
  await page.waitForTimeout(ms);
}

// The pack's text line `name` on every node that has one: the widget's value and what the page shows there (the
// DOM element's text, if it is laid out with a size; "" when hidden).
async function lines(page, name) {
  return await page.evaluate((name) => window.app.graph.nodes
    .filter((n) => n.widgets?.some((w) => w.name === name))
    .map((n) => {
      const element = [...document.querySelectorAll(".infinity-text-line")]
        .find((e) => e.dataset.nodeId === String(n.id) && n.widgets.some((w) => w.element === e && w.name === name));
      const box = element?.getBoundingClientRect();
      const visible = !!box && box.width > 0 && box.height > 0 && getComputedStyle(element).visibility !== "hidden";
      return { id: n.id, type: n.type, text: n.widgets.find((w) => w.name === name).value,
               shown: visible ? element.textContent : "" };
    }), name);
}

// Edit widgets like a user: in Nodes 2.0 numbers are typed into the node's own input field (Enter commits);
// else (and for combos) the value is set and the widget's callback runs, as the canvas widget does.
async function setWidgets(page, nodeId, values) {
  for (const [name, value] of Object.entries(values)) {
    const field = page.locator(`[data-node-id="${nodeId}"] [data-widget-name="${name}"] input[role=spinbutton]`);
    if (report.canvas === "nodes2" && typeof value === "number" && await field.count()) {
      await field.first().fill(String(value));
      await field.first().press("Enter");
      continue;
    }
    await page.evaluate(({ nodeId, name, value }) => {
      const w = window.app.graph.getNodeById(nodeId).widgets.find((x) => x.name === name);
      w.value = value;
      w.callback?.(value);
    }, { nodeId, name, value });
  }
}

async function idle(page, timeoutMs = 600000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const q = await page.evaluate(async () => (await fetch("/api/queue")).json());
    if (!q.queue_running.length && !q.queue_pending.length) return;
    await page.waitForTimeout(250);
  }
  throw new Error("the queue did not empty");
}

// Fit the whole graph into the canvas below the menus; returns the graph's screen rectangle (+ margin).
async function fitGraph(page) {
  return await page.evaluate(() => {
    const nodes = window.app.graph.nodes;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - 30));
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const rect = window.app.canvas.canvas.getBoundingClientRect();  // the canvas starts right of the side bar
    // newer frontends lay their side bar, tabs and run button over a canvas that starts at the window's corner
    const left = rect.left < 10 ? 100 : 24, top = rect.top < 10 ? 90 : 30;
    const area = { left, top, width: rect.width - left - 24, height: rect.height - top - 90 };
    const ds = window.app.canvas.ds;
    ds.scale = Math.min(area.width / (x1 - x0), area.height / (y1 - y0), 1.2);
    ds.offset = [area.left / ds.scale - x0, area.top / ds.scale - y0];
    const m = 14;
    return { x: rect.left + area.left - m, y: rect.top + area.top - m,
             width: (x1 - x0) * ds.scale + 2 * m, height: (y1 - y0) * ds.scale + 2 * m };
  });
}

try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("pageerror", (e) => report.page_errors.push(String(e?.stack || e).slice(0, 2000)));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const where = m.location()?.url || "";
    const text = `${m.text().slice(0, 500)}${where ? ` (${where})` : ""}`;
    // a fresh user folder has no user.css, saved workflows, subgraphs or templates index: 404s by design
    // Only what comes from or names the pack counts: a newer frontend on an older backend logs errors of its own
    // (its Jobs API, global subgraphs: endpoints that backend lacks; a closed network for its model links)
    const ours = /Infinity|infinity/.test(text);
    (ours ? report.console_errors : report.ignored_console).push(text);
  });
  page.on("response", (r) => { if (r.status() >= 400) report.failed_requests.push(`${r.status()} ${r.url()}`); });

  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 90000 });
  await page.waitForFunction(() => window.app?.graph && window.comfyAPI?.api?.api && document.querySelector("canvas"),
                             null, { timeout: 90000 });
  await page.waitForTimeout(1500);

  report.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? "unknown");
  const vueSetting = "Comfy.VueNodes.Enabled";
  if (flag("vue-nodes")) {  // a frontend without Nodes 2.0 stores the setting but draws no node as a DOM element
    await page.evaluate(async (id) => window.app.extensionManager.setting.set(id, true), vueSetting);
    await page.evaluate(async () => window.app.loadGraphData(
      { last_node_id: 1, last_link_id: 0, nodes: [{ id: 1, type: "InfinityDecode", pos: [0, 0], size: [300, 100],
        flags: {}, order: 0, mode: 0, inputs: [], outputs: [], properties: {}, widgets_values: [0] }],
        links: [], groups: [], config: {}, extra: {}, version: 0.4 }, true, true, "probe"));
    await page.waitForTimeout(1000);
    if (!(await page.locator('[data-node-id="1"]').count())) {
      throw new Error(`Nodes 2.0 could not be turned on (${vueSetting}) in frontend ${report.frontend}`);
    }
  }
  report.canvas = flag("vue-nodes") ? "nodes2" : "classic";
  if (shots) {  // clean thumbnails: no minimap, no canvas statistics
    await page.addStyleTag({ content: ".minimap-main-container { display: none !important; }" });
    await page.evaluate(async () => window.app.extensionManager.setting.set("Comfy.Graph.CanvasInfo", false));
  }
  // the size-preview extension must be registered exactly once
  report.extension_registrations = await page.evaluate(
    () => window.app.extensions.filter((e) => e.name === "Infinity.SizePreview").length);
  const listing = await page.evaluate(async () => (await fetch("/api/workflow_templates")).json());
  report.templates = listing[moduleName] || [];
  if (!report.templates.length) throw new Error(`no templates listed for ${moduleName}: ${JSON.stringify(listing)}`);

  for (const name of report.templates) {
    if (flag("queue")) await idle(page);  // else a running prompt's previews land on the new graph's nodes
    const entry = { name };
    report.workflows.push(entry);
    const loaded = await page.evaluate(async ({ module, name }) => {
      const base = `/api/workflow_templates/${module}/${name}`;
      const res = await fetch(`${base}.json`);
      const thumb = await fetch(`${base}.jpg`);
      const json = await res.json();
      await window.app.loadGraphData(json, true, true, name);   // what the template browser does
      const nodes = window.app.graph.nodes.map((n) => ({
        id: n.id, type: n.type, known: !!window.LiteGraph?.registered_node_types?.[n.type],
        has_errors: !!n.has_errors, size: [...n.size], min: [...n.computeSize()],
        sized_by_latent: !!n.inputs?.some((i) => i.name === "latent_image" && i.link != null),
      }));
      return { status: res.status, thumbnail: thumb.status, thumbnail_type: thumb.headers.get("content-type"), nodes };
    }, { module: moduleName, name });
    Object.assign(entry, loaded);
    await settle(page, 800);
    // e.g. "Missing Models": with every file in place, any dialog means a wrong name in the workflow
    entry.dialogs = await page.evaluate(() => [...document.querySelectorAll('[role="dialog"]')]
      .map((d) => d.innerText.trim().slice(0, 3000)));
    // warnings/errors the frontend raised while loading (e.g. "Invalid workflow against zod schema")
    entry.toasts = await page.evaluate(() => [...document.querySelectorAll(".p-toast-message")]
      .map((t) => t.innerText.trim().slice(0, 500)));
    await page.evaluate(() => document.querySelectorAll(".p-toast-close-button").forEach((b) => b.click()));
    for (let i = 0; i < 3 && entry.dialogs.length; i++) {
      await page.keyboard.press("Escape");
      await page.waitForTimeout(200);
    }
    entry.geometry = await page.evaluate(() => window.app.graph.nodes.map((n) => ({
      id: n.id, pos: [...n.pos], size: [...n.size] })));
    if (shots) {
      fs.mkdirSync(shots, { recursive: true });
      const clip = await fitGraph(page);
      await settle(page, 500);
      await page.screenshot({ path: path.join(shots, `${name}.png`), clip });
    }
    // the loaders' status line (web/infinity_model_status.js): present, or downloaded on run with its size
    entry.model_status = await lines(page, "infinity_model_status");
    // a Missing Models entry whose Download button the frontend disables (wrong suffix or source, bad folder)
    entry.dialog_errors = entry.dialogs.filter((d) => /Only allowed suffixes|not allowed from source|Invalid directory/.test(d));
    entry.previews = await lines(page, "infinity_size");

    if (flag("fast")) {  // as a user would: through the widgets, so the frontend serialises the change
      entry.fast = await page.evaluate(() => {
        const changed = [];
        for (const node of window.app.graph.nodes) {
          for (const w of node.widgets || []) {
            const value = w.name === "budget" ? "0.06M" : w.name === "tile_size" && w.value > 0 ? 8 : undefined;
            if (value !== undefined && w.value !== value) {
              w.value = value;
              w.callback?.(value);
              changed.push(`${node.id}.${w.name}=${value}`);
            }
          }
        }
        return changed;
      });
    }
    const converted = await page.evaluate(async () => {
      const p = await window.app.graphToPrompt();
      return { output: p.output, workflow_nodes: p.workflow.nodes.length };
    });
    entry.api_prompt = converted.output;
    if (flag("queue")) {
      entry.queue = await page.evaluate(async () => {
        const p = await window.app.graphToPrompt();
        try {
          return await window.comfyAPI.api.api.queuePrompt(0, p);
        } catch (e) {
          return { error: String(e), details: e?.response ?? null };
        }
      });
    }
  }

  if (flag("template-dialog")) {  // the real template browser: open it, pick the pack, click a card
    if (flag("queue")) await idle(page);
    const name = report.templates[0];
    const step = { name, ok: false };
    report.template_dialog = step;
    const opened = await page.evaluate(async () => {
      try { await window.app.extensionManager.command.execute("Comfy.BrowseTemplates"); return true; }
      catch { return false; }
    });
    if (!opened) {
      step.unavailable = "no Comfy.BrowseTemplates command in this frontend";
    } else {
      const dialog = page.locator('[role="dialog"]');
      await dialog.getByText(moduleName, { exact: true }).first().click({ timeout: 15000 });
      await page.waitForTimeout(1000);
      // the card grid is virtual (cards load their thumbnails when scrolled into view and leave the page when
      // scrolled away): count the distinct thumbnails seen while scrolling down in half screens
      const seen = new Set();
      for (let i = 0; i < 12; i++) {
        const found = await page.evaluate(() => [...document.querySelectorAll('[role="dialog"] img')]
          .filter((im) => im.complete && im.naturalWidth > 0).map((im) => im.currentSrc || im.src));
        found.forEach((src) => seen.add(src));
        const moved = await page.evaluate(() => {
          let any = false;
          document.querySelectorAll('[role="dialog"] *').forEach((e) => {
            if (e.scrollHeight > e.clientHeight + 4 && e.scrollTop + e.clientHeight < e.scrollHeight - 1) {
              e.scrollTop += e.clientHeight / 2;
              any = true;
            }
          });
          return any;
        });
        await page.waitForTimeout(500);
        if (!moved && i > 0) break;
      }
      step.thumbnails = seen.size;
      if (shots) await page.screenshot({ path: path.join(shots, "template_browser.png") });
      await dialog.getByText(name, { exact: true }).first().click({ timeout: 15000 });
      await page.waitForTimeout(1500);
      step.loaded = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type));
      step.dialogs_left = await page.evaluate(() => document.querySelectorAll('[role="dialog"]').length);
      step.ok = step.dialogs_left === 0 && step.loaded.some((t) => t.startsWith("Infinity"));
    }
  }

  if (flag("probe")) {  // the size preview follows widget edits (first workflow with an Infinity Sampler whose
    // size comes from its widgets, not from a latent_image)
    const candidates = report.workflows.filter(
      (w) => w.nodes?.some((n) => n.type === "InfinitySampler" && !n.sized_by_latent));
    const first = candidates.find((w) => w.name.includes("2b")) ?? candidates[0];  // the 2B template if it has one
    if (first) {
      if (flag("queue")) await idle(page);
      await page.evaluate(async ({ module, name }) => {
        const json = await (await fetch(`/api/workflow_templates/${module}/${name}.json`)).json();
        await window.app.loadGraphData(json, true, true, name);
      }, { module: moduleName, name: first.name });
      const cases = [[1344, 768, "1M"], [1000, 1000, "0.25M"], [512, 1536, "0.60M"], [64, 1024, "1M"],
                     [3200, 640, "1M"], [896, 1152, "0.06M"]];
      const samplerId = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "InfinitySampler").id);
      for (const [width, height, budget] of cases) {
        await setWidgets(page, samplerId, { width, height, budget });
        await settle(page, 200);
        // the values the widgets hold (the number widgets round to their step of 16) and what the preview shows
        const values = await page.evaluate((id) => {
          const node = window.app.graph.getNodeById(id);
          const value = (name) => node.widgets.find((w) => w.name === name).value;
          return { width: value("width"), height: value("height"), budget: value("budget") };
        }, samplerId);
        const line = (await lines(page, "infinity_size")).find((l) => l.id === samplerId);
        report.probe.push({ ...values, text: line.text, shown: line.shown });
      }
      if (shots) {  // the whole graph after a width change, then zoomed onto the sampler, then a refused size
        await setWidgets(page, samplerId, { width: 1344, height: 768, budget: "1M" });
        const clip = await fitGraph(page);
        await settle(page, 500);
        await page.screenshot({ path: path.join(shots, `${first.name}_after_width_change.png`), clip });
        await page.evaluate((id) => {
          const node = window.app.graph.getNodeById(id);
          const ds = window.app.canvas.ds;
          ds.scale = 1.6;
          ds.offset = [-node.pos[0] + 80, -node.pos[1] + 120];
        }, samplerId);
        await settle(page, 500);
        await page.screenshot({ path: path.join(shots, "size_preview_probe.png") });
        await setWidgets(page, samplerId, { width: 64 });
        await settle(page, 300);
        await page.screenshot({ path: path.join(shots, "size_preview_warning.png") });
      }
    }
  }
  const dialogsBad = (w) => (flag("dialogs-allowed") ? w.dialog_errors?.length : w.dialogs?.length);
  // with models absent on purpose a frontend may flag a core loader whose file is missing (1.5x does, instead
  // of a dialog); an Infinity node flagged is always a failure
  const flagged = (n) => n.has_errors && (!flag("dialogs-allowed") || n.type.startsWith("Infinity"));
  const bad = report.workflows.filter((w) => w.status !== 200 || w.nodes?.some(flagged) ||
                                             dialogsBad(w) || w.toasts?.length ||
                                             (flag("queue") && !w.queue?.prompt_id));
  report.ok = !bad.length && !report.page_errors.length && report.extension_registrations === 1 &&
              (!report.template_dialog || report.template_dialog.ok || !!report.template_dialog.unavailable);
  if (bad.length) report.error = `failed: ${bad.map((w) => w.name).join(", ")}`;
} catch (e) {
  report.error = String(e?.stack || e);
} finally {
  await browser.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
const out = opt("out");
if (out) fs.writeFileSync(out, JSON.stringify(report, null, 2));
console.log(JSON.stringify({ ok: report.ok, error: report.error, page_errors: report.page_errors,
                             console_errors: report.console_errors }, null, 2));
process.exit(report.ok ? 0 : 1);
