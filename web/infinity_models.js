// The status line of the Infinity loaders, as a pure function (no browser, no ComfyUI): unit-tested with
// `node --test` against the server's GET /infinity/model_files (nodes/comfy_glue.py official_status()).
//
// `files` is that route's list: { name, folder, title, present, size (estimate), source, into, ... } per
// official file. Files that are not official get no line.

/** {text, warn} for the loader's selected file name and its download_missing toggle. */
export function describeModelFile(files, name, download) {
  const file = (files || []).find((f) => f.name === name);
  if (!file) return { text: "", warn: false };
  if (file.present) return { text: `✓ official file, in models/${file.folder}`, warn: false };
  if (download) return { text: `⬇ downloads on run: about ${file.size} from ${file.source}`, warn: false };
  return { text: `⚠ not downloaded yet (about ${file.size}): turn on download_missing, or put it into ${file.into}`,
           warn: true };
}
