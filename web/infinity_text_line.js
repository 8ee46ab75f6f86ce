// One line of status text drawn inside a node (the size preview, the loaders' download status): shrunk to
// fit the node's width, green, or red for a warning. No browser APIs beyond the canvas context passed in.
export const LINE_HEIGHT = 22;

export function drawTextLine(ctx, text, warn, widgetWidth, y) {
  if (!text) return;
  const margin = 15;
  let size = 12;
  ctx.save();
  ctx.font = `${size}px Arial`;
  while (size > 8 && ctx.measureText(text).width > widgetWidth - 2 * margin) {
    size -= 1;
    ctx.font = `${size}px Arial`;
  }
  ctx.fillStyle = warn ? "#ff6b6b" : "#8fd18f";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(text, margin, y + LINE_HEIGHT / 2);
  ctx.restore();
}

// The line as a node widget: never saved with the workflow nor sent with the prompt; `describe(node)`
// gives { text, warn } whenever the node is drawn.
export function textLineWidget(name, type, describe) {
  return {
    name,
    type,
    value: "",
    serialize: false,                 // not in widgets_values
    options: { serialize: false },    // not in the API prompt
    computeSize: (width) => [width, LINE_HEIGHT],
    draw(ctx, node, widgetWidth, y) {
      const { text, warn } = describe(node);
      this.value = text;
      drawTextLine(ctx, text, warn, widgetWidth, y);
    },
  };
}

// Every node of this type gets the widget once when it is created, and grows to fit it.
export function addWidgetOnCreate(nodeType, makeWidget) {
  const onNodeCreated = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const result = onNodeCreated?.apply(this, arguments);
    const widget = makeWidget();
    if (!this.widgets?.some((w) => w.name === widget.name)) {
      this.addCustomWidget(widget);
      const [w, h] = this.computeSize();
      this.setSize([Math.max(this.size[0], w), Math.max(this.size[1], h)]);
    }
    return result;
  };
}
