// ComfyUI's app and API client for the pack's extensions. The frontend (1.27 and 1.5x alike) publishes them on
// window.comfyAPI before it loads extensions; the /scripts/*.js files are only shims of that object, which the
// newer frontends mark deprecated. The import is the fallback for a frontend without window.comfyAPI.
const shared = window.comfyAPI;
export const app = shared?.app?.app ?? (await import("../../scripts/app.js")).app;
export const api = shared?.api?.api ?? (await import("../../scripts/api.js")).api;
