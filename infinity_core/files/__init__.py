"""Checkpoint files: reading them safely (`checkpoints`: safetensors and weights-only .pth, key remapping,
shard indexes), telling their kind from the header (`file_kinds`), building ready modules from them
(`loading`), writing converted copies (`convert`) and the tiny random models the tests and self-check use
(`random_models`)."""
