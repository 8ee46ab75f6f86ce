// Infinity's size snapping, as a pure function (no browser, no ComfyUI): unit-tested with `node --test`.
//
// `tables` is what GET /infinity/schedules returns (built from infinity_core.schedules):
//   { templates: [[h_div_w, [[h, w], ... 13 grids of the 1M schedule]], ...],   // reference order
//     budgets: [["0.06M", 7], ...], min_side, max_side, max_aspect, vae_stride }
// The rules mirror infinity_core.schedules.schedule_for_size: refuse sides outside min_side..max_side
// and aspects beyond max_aspect (4:1; the templates themselves go from 1:3 to 3:1), else take the
// first template with the smallest |t - h/w|; the budget keeps the first n grids; the image is
// vae_stride x the final grid; tokens = sum of h*w.

/**
 * @returns {{ok: true, width: number, height: number, template: number, budget: string, scales: number,
 *            tokens: number, grid: number[], snapped: boolean} | {ok: false, error: string}}
 */
export function snapSize(tables, width, height, budget) {
  const auto = budget === AUTO;
  const entry = tables.budgets.find(([name]) => name === budget);
  if (!entry && !auto) return { ok: false, error: `unknown budget ${budget}` };
  const w = Number(width), h = Number(height);
  if (width === "" || height === "" || !Number.isFinite(w) || !Number.isFinite(h)) {
    return { ok: false, error: `${width}×${height} is not a size` };
  }
  if (Math.min(w, h) < tables.min_side || Math.max(w, h) > tables.max_side) {
    return { ok: false, error: `${w}×${h}: each side must be ${tables.min_side}..${tables.max_side} px` };
  }
  if (Math.max(w / h, h / w) > tables.max_aspect) {
    return { ok: false, error: `${w}×${h}: aspect ratio beyond ${tables.max_aspect}:1 (templates: ${templateSpan(tables)})` };
  }
  const ratio = h / w;
  let best = null;
  let bestDistance = Infinity;
  for (const template of tables.templates) {
    const distance = Math.abs(template[0] - ratio);
    if (distance < bestDistance) {  // strict: the first minimum wins, like Python's min()
      best = template;
      bestDistance = distance;
    }
  }
  const [name, scales] = auto ? nearestBudget(tables, best[1], w * h) : entry;
  const grids = best[1].slice(0, scales);
  const [gh, gw] = grids[grids.length - 1];
  const outW = gw * tables.vae_stride, outH = gh * tables.vae_stride;
  return {
    ok: true, width: outW, height: outH, template: best[0], budget: name, auto, scales,
    tokens: grids.reduce((sum, [a, b]) => sum + a * b, 0), grid: [gh, gw],
    snapped: outW !== w || outH !== h,
  };
}

export const AUTO = "auto";

/** Budget "auto": the [name, scales] whose final image (at this template) has the pixel count nearest to
 *  `pixels`; the first (smaller) one on a tie, like Python's min() in infinity_core.schedules.nearest_budget. */
export function nearestBudget(tables, grids1M, pixels) {
  let best = null, bestDistance = Infinity;
  for (const [name, scales] of tables.budgets) {
    const [gh, gw] = grids1M[scales - 1];
    const distance = Math.abs(gh * gw * tables.vae_stride * tables.vae_stride - pixels);
    if (distance < bestDistance) { best = [name, scales]; bestDistance = distance; }
  }
  return best;
}

/** "1:3 to 3:1": the most extreme templates, as width:height. */
export function templateSpan(tables) {
  const ratios = tables.templates.map(([t]) => t);
  const side = (t) => Number((t >= 1 ? t : 1 / t).toFixed(2));
  return `1:${side(Math.max(...ratios))} to ${side(Math.min(...ratios))}:1`;
}

/** The budget's number of scales, or undefined. */
export function budgetScales(tables, budget) {
  const entry = tables.budgets.find(([name]) => name === budget);
  return entry ? entry[1] : undefined;
}

/** "→ 1344×768 · template 0.571 · 11,252 tokens · 13 scales" (or the error). */
export function formatSize(result) {
  if (!result.ok) return `⚠ ${result.error}`;
  return `→ ${result.width}×${result.height} · template ${result.template} · ` +
    `${result.tokens.toLocaleString("en-US")} tokens · ${result.scales} scales` +
    (result.auto ? ` · auto: ${result.budget}` : "");
}

/** The Infinity Encode node's preview: width and height both 0 = the image's own aspect; only one of them 0 is
 *  refused by the node (only the ratio is used), so it is a warning here too. */
export function describeEncode(tables, width, height, budget) {
  if (!width && !height) {
    if (budget === AUTO) return { text: "→ the image's own aspect · budget auto: nearest to the image's size", warn: false };
    return { text: `→ the image's own aspect · budget ${budget} · ${budgetScales(tables, budget) ?? "?"} scales`,
             warn: false };
  }
  if (!width || !height) {
    return { text: `⚠ set ${width ? "height" : "width"} too, or both to 0 (the image's own aspect)`, warn: true };
  }
  const result = snapSize(tables, width, height, budget);
  return { text: formatSize(result), warn: !result.ok };
}
