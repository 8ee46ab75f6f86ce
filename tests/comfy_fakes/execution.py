"""Fake of how ComfyUI's server runs one node of a prompt (execution.py `validate_inputs`, `get_input_data`).

Before `execute`: a widget the caller leaves out gets the value the frontend sends for a fresh node
(the schema default, a combo's first option); INT/FLOAT/STRING/BOOLEAN values are converted as the
server converts them; values below `min`, above `max` or not among a combo's options are refused
with the server's error types, so `execute` never sees them. Values that come over a link (`linked`:
e.g. a widget converted to an input) are not range-checked, as on the server. An input the schema
does not declare is an error here (the server would drop it silently: a test must not rely on it).
Hidden inputs reach the class clone only when the schema declares them. Runs under inference mode.
"""
from __future__ import annotations

import torch

from . import latent_preview, ops
from . import latest_io as io

CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


class PromptValidationError(Exception):
    """The server's refusal of a prompt (HTTP 400 with node_errors); the node never runs."""

    def __init__(self, node_id: str, input_name: str, kind: str, message: str):
        super().__init__(f"{node_id}.{input_name}: {kind}: {message}")
        self.node_id, self.input_name, self.kind = node_id, input_name, kind


def _is_widget(item) -> bool:
    return isinstance(item, io.WidgetInput)


def _frontend_default(item):
    """What the frontend (1.x: getDefaultValue, the number widgets) puts in a fresh widget: the default, else a
    combo's first option, 0, "" or false."""
    if item.default is not None:
        return item.default
    if isinstance(item, io.Combo.Input):
        return item.options[0] if item.options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(item.io_type)


def validate_inputs(schema: io.Schema, inputs: dict, linked=()) -> dict:
    """The inputs `execute` receives, or PromptValidationError as the server would answer."""
    declared = {item.id: item for item in schema.inputs or []}
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise TypeError(f"{schema.node_id}: {unknown} are not inputs of its schema (ComfyUI would drop them)")
    out = {}
    for name, item in declared.items():
        if name not in inputs:
            if _is_widget(item) and _frontend_default(item) is not None:
                value = _frontend_default(item)
            elif item.optional:
                continue
            else:
                raise PromptValidationError(schema.node_id, name, "required_input_missing", "Required input is missing")
        else:
            value = inputs[name]
        if _is_widget(item) and name not in linked:
            value = _checked(schema.node_id, item, value)
        out[name] = value
    return out


def _checked(node_id: str, item, value):
    convert = CONVERT.get(item.io_type)
    if convert is not None:
        try:
            value = convert(value)
        except (TypeError, ValueError) as err:
            raise PromptValidationError(node_id, item.id, "invalid_input_type",
                                        f"Failed to convert an input value to a {item.io_type} value ({err})") from None
    low, high = getattr(item, "min", None), getattr(item, "max", None)
    if low is not None and value < low:
        raise PromptValidationError(node_id, item.id, "value_smaller_than_min",
                                    f"Value {value} smaller than min of {low}")
    if high is not None and value > high:
        raise PromptValidationError(node_id, item.id, "value_bigger_than_max",
                                    f"Value {value} bigger than max of {high}")
    if isinstance(item, io.Combo.Input) and value not in item.options:
        raise PromptValidationError(node_id, item.id, "value_not_in_list", f"Value not in list: {value!r}")
    return value


def hidden_values(schema: io.Schema, unique_id: str, prompt: dict | None = None) -> dict:
    """What the executor hands PREPARE_CLASS_CLONE: only the hidden inputs the schema declares."""
    known = {io.Hidden.unique_id: unique_id, io.Hidden.prompt: prompt, io.Hidden.extra_pnginfo: None,
             io.Hidden.dynprompt: None}
    return {h: known.get(h) for h in schema.hidden or []}


def execute_node(node_cls, inputs: dict, unique_id: str = "42", linked=(), prompt: dict | None = None,
                 extra_data: dict | None = None):
    """`extra_data` as the frontend sends it with the prompt; the newest ComfyUI applies its preview_method for
    the prompt (then the launch flag again), 0.3.64 ignores it."""
    newest = ops.GENERATION != "0.3.64"
    schema = node_cls.GET_SCHEMA()
    values = validate_inputs(schema, inputs, linked)
    clone = node_cls.PREPARE_CLASS_CLONE(hidden_values(schema, unique_id, prompt))
    if newest:
        latent_preview.set_preview_method((extra_data or {}).get("preview_method"))
    try:
        with torch.inference_mode():
            return clone.execute(**values)
    finally:
        if newest:
            latent_preview.set_preview_method(None)
