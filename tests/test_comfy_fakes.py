"""The fake ComfyUI (tests/comfy_fakes) is held to what ComfyUI does where the node tests rely on it.

Each test states a behaviour of ComfyUI a125cd84 that the double reproduces: the server validates
widgets before `execute`; hidden inputs arrive only when declared; the low-VRAM load leaves the
bare parameters of non-leaf modules on the offload device; the model folders share one extension
set. With COMFYUI_PATH (and COMFYUI_PYTHON) set, the partial load is compared with the real one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pack_harness import FAKES, _drop_modules, _load_by_path
from shared_paths import REPO

COMFYUI = os.environ.get("COMFYUI_PATH")


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    module = _load_by_path("comfy_fakes_standalone", FAKES / "__init__.py")
    module.install(tmp_path_factory.mktemp("fake_base"))
    yield module
    _drop_modules("comfy_fakes_standalone")


def _node(io, hidden=None, inputs=None):
    class Probe(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="Probe", inputs=inputs or [], outputs=[], hidden=hidden)

        @classmethod
        def execute(cls, **kwargs):
            return cls.hidden.unique_id, kwargs
    return Probe


def test_hidden_inputs_only_when_declared(fakes):
    io, run = fakes.latest.io, fakes.execution.execute_node
    assert run(_node(io, hidden=[io.Hidden.unique_id]), {}, unique_id="7")[0] == "7"
    assert run(_node(io), {}, unique_id="7")[0] is None


def test_widgets_are_defaulted_converted_and_range_checked_before_execute(fakes):
    io, run, refused = fakes.latest.io, fakes.execution.execute_node, fakes.execution.PromptValidationError
    node = _node(io, inputs=[io.Int.Input("n", default=2, min=1, max=4), io.Float.Input("f", default=0.5, max=1.0),
                             io.Combo.Input("c", options=["a", "b"]), io.String.Input("s", default="x"),
                             io.Latent.Input("latent", optional=True)])
    assert run(node, {})[1] == {"n": 2, "f": 0.5, "c": "a", "s": "x"}  # what the frontend sends for a new node
    bare = _node(io, inputs=[io.Int.Input("n"), io.Float.Input("f"), io.String.Input("s"), io.Boolean.Input("b")])
    assert run(bare, {})[1] == {"n": 0, "f": 0.0, "s": "", "b": False}  # no default: 0, empty, off
    assert run(node, {"n": 3.0, "f": 1})[1]["n"] == 3 and isinstance(run(node, {"f": 1})[1]["f"], float)
    for inputs, kind in (({"n": 0}, "value_smaller_than_min"), ({"n": 5}, "value_bigger_than_max"),
                         ({"f": 1.5}, "value_bigger_than_max"), ({"c": "z"}, "value_not_in_list"),
                         ({"n": "x"}, "invalid_input_type")):
        with pytest.raises(refused, match=kind):
            run(node, inputs)
    assert run(node, {"n": 9}, linked=("n",))[1]["n"] == 9  # a value over a link is not range-checked
    with pytest.raises(TypeError, match="not inputs of its schema"):
        run(node, {"typo": 1})
    with pytest.raises(refused, match="required_input_missing"):
        run(_node(io, inputs=[io.Latent.Input("latent")]), {})


def test_model_folders_share_one_extension_set(fakes):
    fp = fakes.folder_paths
    sets = [fp.folder_names_and_paths[name][1] for name in ("checkpoints", "diffusion_models", "vae", "text_encoders")]
    assert all(s is fp.supported_pt_extensions for s in sets)
    fp.add_model_folder_path("brand_new", "/tmp/x")
    assert fp.folder_names_and_paths["brand_new"][1] == set()  # a new folder starts with its own empty set


def _tiny_module(fakes, depth=2):
    from infinity_core.model.config import InfinityConfig
    from infinity_core.files.random_models import random_transformer
    from infinity_core.model.transformer import InfinityTransformer
    config = InfinityConfig(depth=depth, embed_dim=64, num_heads=2, bits_per_token=16, text_channels=128)
    module = InfinityTransformer(config, ops=fakes.ops.manual_cast)
    module.load_state_dict(random_transformer(config, seed=0).state_dict())
    return module


NON_LEAF_OWNERS = {"": ["cfg_uncond", "pos_start"], "text_proj_for_sos.ca": ["mat_q"], "blocks.0": ["ada_gss"],
                   "blocks.0.sa": ["scale_mul_1H11"], "blocks.1": ["ada_gss"], "blocks.1.sa": ["scale_mul_1H11"]}


def _load_with_budget(fakes, patcher_class):
    """The tiny transformer loaded by `load_models_gpu` with room for a few layers only; (module, patcher,
    the bare parameters of its non-leaf modules by name)."""
    module = _tiny_module(fakes)
    patcher = patcher_class(module, torch.device("cpu"), torch.device("cpu"))
    fakes.model_management.LOWVRAM_BUDGET = 60_000
    try:
        fakes.model_management.load_models_gpu([patcher])
    finally:
        fakes.model_management.reset()
    params = dict(module.named_parameters())
    bare = {(owner, n): params[f"{owner}.{n}" if owner else n] for owner, names in NON_LEAF_OWNERS.items()
            for n in names}
    return module, patcher, bare


def test_partial_load_leaves_non_leaf_parameters_on_the_offload_device(fakes):
    mp = fakes.model_patcher
    module, patcher, bare = _load_with_budget(fakes, mp.ModelPatcher)
    params = dict(module.named_parameters())
    for (owner, name), p in bare.items():
        assert isinstance(p, mp.OffloadedParameter) and p.device == mp.OFFLOAD_DEVICE, (owner, name)
    kept = {n for n, m in module.named_modules() if isinstance(getattr(m, "weight", None), mp.OffloadedParameter)}
    loaded = {n for n, m in module.named_modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)} - kept
    assert kept & {"blocks.0.ffn.fc1", "head"} and loaded, (kept, loaded)  # partly: some layers moved, some not
    x = torch.ones(2, 64)
    with pytest.raises(RuntimeError, match="same device"):
        params["pos_start"] + x  # a weight on another device, used without moving it
    moved = params["pos_start"].to(device=x.device, dtype=torch.float32)
    assert type(moved) is torch.Tensor and torch.equal(moved + x, params["pos_start"].as_subclass(torch.Tensor) + x)
    fakes.model_management.load_models_gpu([patcher], force_full_load=True)
    assert all(type(p) is torch.nn.Parameter for p in module.parameters())


REAL_LOAD = """
import json, sys
sys.argv = [sys.argv[0], "--cpu"]
comfyui, repo, budget = sys.argv_real
sys.path[:0] = [comfyui, repo]
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.model_patcher, comfy.ops
from infinity_core.model.config import InfinityConfig
from infinity_core.files.random_models import random_transformer
from infinity_core.model.transformer import InfinityTransformer
config = InfinityConfig(depth=2, embed_dim=64, num_heads=2, bits_per_token=16, text_channels=128)
module = InfinityTransformer(config, ops=comfy.ops.manual_cast)
module.load_state_dict(random_transformer(config, seed=0).state_dict())
patcher = comfy.model_patcher.ModelPatcher(module, torch.device("cpu"), torch.device("cpu"))
patcher.load(torch.device("cpu"), lowvram_model_memory=int(budget))
print(json.dumps(sorted(n for n, m in module.named_modules() if getattr(m, "comfy_patched_weights", False))))
"""


@pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH (and COMFYUI_PYTHON) to compare with ComfyUI's own load")
@pytest.mark.parametrize("budget", [60_000, 300_000])
def test_the_partial_load_moves_what_comfyui_moves(fakes, budget):
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    script = REAL_LOAD.replace("sys.argv_real", repr([COMFYUI, str(REPO), str(budget)]))
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300, cwd=str(Path(COMFYUI)))
    assert done.returncode == 0, done.stderr[-3000:]
    real = json.loads(done.stdout.strip().splitlines()[-1])
    module = _tiny_module(fakes)
    patcher = fakes.model_patcher.ModelPatcher(module, torch.device("cpu"), torch.device("cpu"))
    patcher.load_partially(budget)
    moved = sorted(n for n, m in module.named_modules()
                   if n not in patcher.offloaded_modules and any(True for _ in m.parameters(recurse=False)))
    assert moved == real


@pytest.fixture
def newest(tmp_path):
    """The double of the newest ComfyUI, dynamic VRAM on (installed standalone; reset to 0.3.64 after)."""
    module = _load_by_path("comfy_fakes_newest", FAKES / "__init__.py")
    yield module, module.install(tmp_path, "0.38"), tmp_path
    module.install(tmp_path, "0.3.64")
    _drop_modules("comfy_fakes_newest")


def test_dynamic_vram_linear_has_no_tensors_until_its_state_dict_is_loaded_through_it(newest):
    fakes, modules, base = newest
    layer = fakes.ops.manual_cast.Linear(4, 3)
    assert layer.weight is None and layer.bias is None and set(layer.state_dict()) == set()
    w, b = torch.randn(3, 4), torch.randn(3)
    result = layer.load_state_dict({"weight": w, "bias": b, "scale": torch.ones(1)}, strict=False, assign=True)
    assert result.unexpected_keys == ["scale"] and not result.missing_keys
    assert layer.weight.data_ptr() == w.data_ptr() and torch.equal(layer.bias, b)  # assign: adopted, not copied
    empty = fakes.ops.manual_cast.Linear(4, 3)
    assert set(empty.load_state_dict({}, strict=False).missing_keys) == {"weight", "bias"}
    assert "comfy.memory_management" in modules and modules["comfy.model_patcher"].CoreModelPatcher is \
        fakes.model_patcher.ModelPatcherDynamic
    fakes.install(base, "0.38-legacy")  # --disable-dynamic-vram
    assert fakes.ops.manual_cast.Linear(4, 3).weight.shape == (3, 4)
    assert fakes.model_patcher.CoreModelPatcher is fakes.model_patcher.ModelPatcher


def test_dynamic_patcher_streams_comfy_layers_and_puts_the_rest_on_the_device(newest):
    fakes, _, _ = newest
    mp = fakes.model_patcher
    module, _, bare = _load_with_budget(fakes, mp.CoreModelPatcher)  # the budget changes nothing here
    for key, p in bare.items():
        assert type(p) is torch.nn.Parameter, key
    assert isinstance(module.head.weight, mp.OffloadedParameter) and module.head.comfy_cast_weights
    x = torch.ones(2, 64)
    assert torch.equal(module.head(x), torch.nn.functional.linear(x, module.head.weight.as_subclass(torch.Tensor),
                                                                   module.head.bias.as_subclass(torch.Tensor)))
