// One line of status text inside a node (the size preview, the loaders' download status), as a DOM widget:
// the classic canvas and Nodes 2.0 (Vue nodes) both render DOM widgets as they are, whereas a widget that only
// has a draw() is repainted by Nodes 2.0 on few occasions, so its text goes stale there. The text is set
// whenever something it depends on changes (refreshLines); it is never saved nor sent with the prompt.
export const LINE_HEIGHT = 22;
const MARGIN = 2;  // the classic canvas insets a DOM widget by this on every side (its default of 10 would squash it)
const GREEN = "#8fd18f";
const RED = "#ff6b6b";

function lineElement() {
  const element = document.createElement("div");
  element.className = "infinity-text-line";
  Object.assign(element.style, {
    font: "12px Arial, sans-serif", lineHeight: `${LINE_HEIGHT}px`, height: `${LINE_HEIGHT}px`,
    padding: "0 6px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis",
    color: GREEN, pointerEvents: "none", boxSizing: "border-box",
  });
  return element;
}

// Shrinks the font (12 px down to 8 px) until the text fits the width the node gives, as the old canvas line did.
function fit(element) {
  for (let size = 12; size >= 8; size--) {
    element.style.fontSize = `${size}px`;
    if (!element.clientWidth || element.scrollWidth <= element.clientWidth) return;
  }
}

/** Adds the line to `node`; `describe(node)` gives { text, warn }. Returns the widget (its value is the text). */
export function addTextLine(node, name, describe) {
  const element = lineElement();
  let text = "";
  const widget = node.addDOMWidget(name, "infinity_text_line", element, {
    serialize: false,                         // not in the API prompt (widget.serialize below: not in widgets_values)
    hideOnZoom: false,
    hideInPanel: true,                        // 1.5x's parameters panel would show it as an empty row
    margin: MARGIN,
    getValue: () => text,
    setValue: () => {},
    getMinHeight: () => LINE_HEIGHT,
    getMaxHeight: () => LINE_HEIGHT,
  });
  widget.serialize = false;
  widget.computeSize = (width) => [width, LINE_HEIGHT + 2 * MARGIN];
  widget.refresh = (refit = false) => {
    element.dataset.nodeId = String(node.id);  // ids are given after creation; lets a test read what a node shows
    const line = describe(node);
    if (!refit && line.text === text && element.dataset.warn === String(!!line.warn)) return;
    text = line.text ?? "";
    element.textContent = text;
    element.title = text;
    element.dataset.warn = String(!!line.warn);
    element.style.color = line.warn ? RED : GREEN;
    fit(element);
  };
  widget.refresh();
  return widget;
}

function refreshNode(node, refit = false) {
  for (const w of node?.widgets ?? []) w.refresh?.(refit);
}

/** Re-describes every line of the workflow, subgraphs included (after server data arrived, or a run). */
export function refreshLines(app) {
  const root = app.rootGraph ?? app.graph;  // app.graph: frontends before rootGraph
  const graphs = new Set([root, app.canvas?.graph, ...(root?.subgraphs?.values?.() ?? [])]);
  for (const graph of graphs) {
    for (const node of graph?.nodes ?? []) refreshNode(node);
  }
}

// Every node of this type gets the line when created, and re-describes it after any of its widgets changed
// (a callback fires in both canvases), a link came or went (latent_image), a workflow was loaded into it
// (onConfigure) or the node was resized (the font fits the width).
export function addLineOnCreate(nodeType, name, describe) {
  const chain = (method, after) => {
    const before = nodeType.prototype[method];
    nodeType.prototype[method] = function () {
      const result = before?.apply(this, arguments);
      after.call(this);
      return result;
    };
  };
  chain("onNodeCreated", function () {
    if (this.widgets?.some((w) => w.name === name)) return;
    const node = this;
    for (const w of this.widgets ?? []) {
      const callback = w.callback;
      w.callback = function () {
        const result = callback?.apply(this, arguments);
        refreshNode(node);
        return result;
      };
    }
    addTextLine(this, name, describe);
    const [w, h] = this.computeSize();
    this.setSize([Math.max(this.size[0], w), Math.max(this.size[1], h)]);
  });
  chain("onConfigure", function () { refreshNode(this); });
  chain("onConnectionsChange", function () { refreshNode(this); });
  chain("onResize", function () { refreshNode(this, true); });
}
