"""Generating with a loaded model: the next-scale sampler (`sampler`), per-token teacher forcing for
image-to-image and masks (`masks`), the speed settings that become pruning and guidance policies (`speed`) and
the working-memory estimates ComfyUI is told before a run (`memory`)."""
