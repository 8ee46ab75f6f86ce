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
