"""The networks and what they are made of: the architecture config and presets (`config`), the layers
(`ops`, `layers`, `attention`, `rope`), the transformer and its token pruning (`transformer`, `pruning`: the
blocks call it), the bitwise tokenizer (`vae`, `quantizer`), the text side (`conditioning`, `text_encoder`)."""
