// Live size preview on the Infinity Sampler / Sampler (Advanced) / Encode nodes: the exact output
// resolution, aspect template and token count the current width/height/budget widgets give, before
// the graph runs (Infinity only generates on its aspect templates, so requests are snapped).
// The tables come from the pack's server route; the snapping rule lives in infinity_schedule.js.
import { api, app } from "./infinity_comfy.js";
import { describeEncode, formatSize, snapSize } from "./infinity_schedule.js";
import { addLineOnCreate, refreshLines } from "./infinity_text_line.js";

const EXTENSION = "Infinity.SizePreview";
const SAMPLERS = new Set(["InfinitySampler", "InfinitySamplerAdvanced"]);
const ENCODE = "InfinityEncode";
const WIDGET = "infinity_size";

let tables = null;
let tablesFailed = false;

async function loadTables() {
  try {
    const response = await api.fetchApi("/infinity/schedules");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    tables = await response.json();
  } catch (error) {
    tablesFailed = true;
    console.warn("[Infinity] size preview disabled: cannot read /infinity/schedules", error);
  }
  refreshLines(app);
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function linked(node, name) {
  return node.inputs?.some((input) => input.name === name && input.link != null) ?? false;
}

/** The preview text and whether it is a warning, for the node's current widget values. */
export function describeNode(node) {
  if (!tables) return { text: tablesFailed ? "" : "…", warn: false };
  const budget = widgetValue(node, "budget");
  if (SAMPLERS.has(node.comfyClass) && linked(node, "latent_image")) {
    return { text: "→ size and scales come from latent_image", warn: false };
  }
  const width = widgetValue(node, "width");
  const height = widgetValue(node, "height");
  if (node.comfyClass === ENCODE) return describeEncode(tables, width, height, budget);
  const result = snapSize(tables, width, height, budget);
  return { text: formatSize(result), warn: !result.ok };
}

// Served once, from WEB_DIRECTORY; the frontend imports each module once, so this registers once.
app.registerExtension({
  name: EXTENSION,
  async setup() {
    await loadTables();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SAMPLERS.has(nodeData.name) && nodeData.name !== ENCODE) return;
    addLineOnCreate(nodeType, WIDGET, describeNode);
  },
});
