// A status line under the file list of the Infinity loaders: whether the selected official file is already
// in the models folder or will be downloaded on run, and about how big it is, before anything runs.
// The data come from the pack's route GET /infinity/model_files; the wording lives in infinity_models.js.
import { api, app } from "./infinity_comfy.js";
import { describeModelFile } from "./infinity_models.js";
import { addLineOnCreate, refreshLines } from "./infinity_text_line.js";

const EXTENSION = "Infinity.ModelStatus";
const LOADERS = { InfinityTransformerLoader: "model_name", InfinityBitwiseTokenizerLoader: "vae_name",
                  InfinityTextEncoderLoader: "text_encoder_name" };
const WIDGET = "infinity_model_status";
let files = null;

async function refresh() {
  try {
    const response = await api.fetchApi("/infinity/model_files");
    if (response.ok) files = await response.json();
  } catch (error) {
    console.warn("[Infinity] model status unavailable", error);
  }
  refreshLines(app);
}

function value(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function describeNode(node) {
  return describeModelFile(files, value(node, LOADERS[node.comfyClass]), value(node, "download_missing"));
}

app.registerExtension({
  name: EXTENSION,
  async setup() {
    await refresh();
    api.addEventListener("execution_success", refresh);  // a loader may just have downloaded its file
    api.addEventListener("execution_error", refresh);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(nodeData.name in LOADERS)) return;
    addLineOnCreate(nodeType, WIDGET, describeNode);
  },
});
