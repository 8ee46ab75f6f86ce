"""UI-format workflow (version 0.4: nodes, links, widgets_values) -> API prompt, with a server's /object_info.

What the frontend's graphToPrompt does for plain graphs: widget values are matched to the widget
inputs in input_order (required, then optional), an input with control_after_generate (or named
seed/noise_seed) carries one extra value ("randomize"/"fixed"/...), an image_upload combo one more;
linked inputs become [origin_id, origin_slot]. Frontend-only nodes (Note, MarkdownNote) are skipped.
Not handled (not used by the pack's examples): subgraphs, group nodes, reroutes, primitives, bypass.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def is_widget(spec: list) -> bool:
    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def extra_values(name: str, spec: list) -> int:
    """Values the frontend stores after this widget's own: control_after_generate, image upload."""
    options = spec[1] if len(spec) > 1 else {}
    control = bool(options.get("control_after_generate")) or name in ("seed", "noise_seed")
    upload = any(options.get(k) for k in ("image_upload", "video_upload", "audio_upload"))
    return int(control) + int(upload)


def widget_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of the widget inputs of one /object_info entry, in the frontend's order."""
    out = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            if is_widget(spec):
                out.append((name, spec))
    return out


def convert(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) == 2:
            continue
        if node.get("mode", 0) == 4:
            raise ValueError(f"node {node['id']} is bypassed: not supported")
        info = object_info[node["type"]]
        values = list(node.get("widgets_values") or [])
        inputs, cursor = {}, 0
        for name, spec in widget_inputs(info):
            if cursor < len(values):
                inputs[name] = values[cursor]
            cursor += 1 + extra_values(name, spec)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, target, _, _ = links[slot["link"]]
                assert target == node["id"], f"link {slot['link']} does not end at node {node['id']}"
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
    return prompt
