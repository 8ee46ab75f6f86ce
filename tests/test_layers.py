"""Transformer building blocks on their own: the row-chunked FFN, the CPU oneDNN path, the KV cache."""
import pytest
import torch
import torch.nn.functional as F

from infinity_core.model import ops
from infinity_core.model.conditioning import TextEmbedding
from infinity_core.model.layers import FFN, KVCache
from infinity_core.schedules import ScaleSchedule
from tolerances import assert_within, mlp_bound


def _ffn(dim=64, hidden=256, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    ffn = FFN(dim, hidden, ops)
    for p in ffn.parameters():
        p.data = (torch.randn(p.shape, generator=gen) * 0.1).to(dtype)
    return ffn


def test_chunked_ffn_equals_one_pass_and_only_chunks_resident_weights(monkeypatch):
    ffn = _ffn()
    x_BLC = torch.randn(2, 700, 64, generator=torch.Generator().manual_seed(1))  # 1400 rows: 3 chunks
    calls, mlp = [], FFN._mlp
    monkeypatch.setattr(FFN, "_mlp", lambda self, x: calls.append(x.shape) or mlp(self, x))
    one_pass = mlp(ffn, x_BLC)
    chunked = ffn(x_BLC)
    # the same rows; bit-equal where the BLAS blocks a row's sums alike for 512 and 1400 rows (MKL and oneDNN
    # do on every CPU kernel level tried), which nothing promises: any order is within the rounding bound
    assert chunked.shape == (2, 700, 64)
    assert_within(chunked, one_pass, 2 * mlp_bound(x_BLC, ffn.fc1, ffn.fc2), "row-chunked FFN")
    assert [s[0] for s in calls] == [512, 512, 376]

    calls.clear()
    ffn(x_BLC[:, :500])  # 1000 rows: below two chunks, one pass
    assert calls == [torch.Size([2, 500, 64])]
    calls.clear()
    ffn(x_BLC[:, :512])  # 1024 rows: exactly two chunks
    assert [s[0] for s in calls] == [512, 512]

    calls.clear()
    stored_bf16 = _ffn(dtype=torch.bfloat16)  # every chunk would cast the weights again: one pass
    stored_bf16(x_BLC)
    assert calls == [torch.Size([2, 700, 64])]


# ---- the CPU float32 oneDNN path of large layers ---------------------------------------------------
@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the calls of the private oneDNN op (ops._linear's large-layer path) and restores its state."""
    calls, op = [], torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(args[1].shape) or op(*args))
    monkeypatch.setattr(ops, "_onednn_ok", ops._onednn_ok)
    return calls


def _layer(out_features, in_features, bias=True, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = ops.Linear(in_features, out_features, bias=bias)
    layer.weight.data = (torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5).to(dtype)
    if bias:
        layer.bias.data = torch.randn(out_features, generator=gen).to(dtype)  # large: a dropped bias shows
    return layer


@pytest.mark.skipif(not ops._onednn_ok, reason="this PyTorch build has no oneDNN linear op")
def test_large_float32_layers_take_onednn_and_equal_f_linear(onednn_calls):
    x = torch.randn(2, 7, 512, generator=torch.Generator().manual_seed(1))
    for bias in (True, False):
        layer = _layer(512, 512, bias=bias)  # 512 x 512 = 2**18 weights: the first size on the oneDNN path
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
    assert onednn_calls == [torch.Size([512, 512])] * 2
    onednn_calls.clear()
    small = _layer(511, 513)  # 2**18 - 1 weights: F.linear, exactly
    assert torch.equal(small(x[..., :513 - 1].new_ones(2, 7, 513)), F.linear(x.new_ones(2, 7, 513), small.weight,
                                                                              small.bias))
    assert onednn_calls == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_reduced_precision_layers_use_f_linear(onednn_calls, dtype):
    layer = _layer(512, 1024, dtype=dtype)
    x = torch.randn(3, 1024, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias)) and onednn_calls == []
    stored_fp32 = _layer(512, 1024)  # weights cast to the input's dtype per call
    assert torch.equal(stored_fp32(x), F.linear(x, stored_fp32.weight.to(dtype), stored_fp32.bias.to(dtype)))
    assert onednn_calls == []


@pytest.mark.skipif(not ops._onednn_ok, reason="this PyTorch build has no oneDNN linear op")
def test_a_failing_onednn_op_falls_back_to_f_linear_for_good(monkeypatch, onednn_calls):
    def broken(*args):
        onednn_calls.append("called")
        raise RuntimeError("no oneDNN kernel here")
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    layer, x = _layer(512, 512), torch.randn(4, 512)
    for _ in range(2):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert onednn_calls == ["called"] and ops._onednn_ok is False


def test_layers_bring_weights_from_another_device_to_the_input():
    """Weights left elsewhere (ComfyUI's offload device: the test double's OffloadedParameter) are moved per
    call; bias-less layers too."""
    from comfy_fakes.model_patcher import OffloadedParameter
    for bias in (True, False):
        layer = _layer(8, 16, bias=bias)
        x = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
        expected = F.linear(x, layer.weight, layer.bias)
        expected64 = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
        for name, p in list(layer._parameters.items()):
            if p is not None:
                layer._parameters[name] = OffloadedParameter(p.detach(), requires_grad=False)
        with torch.no_grad():
            assert torch.equal(layer(x), expected)
            assert torch.equal(layer(x.double()), expected64)


# ---- the KV cache ----------------------------------------------------------------------------------
def test_kv_cache_is_allocated_on_the_device_and_dtype_asked_for():
    cache = KVCache.empty(2, 4, 7, 8, "meta", torch.bfloat16)
    for t in (cache.k, cache.v):
        assert (t.device.type, t.dtype, tuple(t.shape)) == ("meta", torch.bfloat16, (2, 4, 7, 8))


def test_kv_cache_stores_up_to_its_capacity_then_attends_without_storing():
    cache = KVCache.empty(1, 2, 5, 3, "cpu", torch.float32)
    k = torch.arange(2 * 9 * 3, dtype=torch.float32).view(1, 2, 9, 3)
    keys, _ = cache.append(k[:, :, :2], k[:, :, :2])
    assert cache.length == 2 and torch.equal(keys, k[:, :, :2])
    keys, values = cache.append(k[:, :, 2:5], k[:, :, 2:5] + 1)  # exactly fills the 5 rows
    assert cache.length == 5 and torch.equal(keys, k[:, :, :5]) and torch.equal(values[:, :, 2:], k[:, :, 2:5] + 1)
    keys, values = cache.append(k[:, :, 5:9], k[:, :, 5:9])  # the final scale: 9 > 5, concatenated, not stored
    assert cache.length == 5 and torch.equal(keys, k) and torch.equal(values[:, :, 5:], k[:, :, 5:9])
    assert torch.equal(values[:, :, :5], torch.cat([k[:, :, :2], k[:, :, 2:5] + 1], 2))


@pytest.mark.parametrize("num_scales, capacity", [(None, 265), (7, 265), (4, 21), (1, 0)])
def test_kv_cache_capacity_is_every_scale_but_the_last(tiny_transformer, prompt, num_scales, capacity):
    # 0.06M square: grids 1, 2, 4, 6, 8, 12, 16 -> 1 + 4 + 16 + 36 + 64 + 144 (+ 256, never stored) = 265
    state = tiny_transformer.condition(TextEmbedding.cat([prompt, prompt]), ScaleSchedule(1.0, "0.06M"), "cpu",
                                       torch.float32, num_scales=num_scales)
    try:
        assert len(state.caches) == 4
        assert all(tuple(c.k.shape) == tuple(c.v.shape) == (2, 2, capacity, 32) for c in state.caches)
    finally:
        tiny_transformer.free(state)
    assert all(c.k is None and c.v is None for c in state.caches)


def test_kv_cache_bytes_by_hand(tiny_config):
    from infinity_core.sampling.memory import kv_cache_bytes
    schedule = ScaleSchedule(1.0, "0.06M")  # 521 tokens, 256 of them in the last scale
    # rows x depth x tokens x width x (keys + values) x bytes
    assert kv_cache_bytes(tiny_config, schedule, 2, torch.float32) == 2 * 4 * 521 * 64 * 2 * 4
    assert kv_cache_bytes(tiny_config, schedule, 2, torch.bfloat16, stored_only=True) == 2 * 4 * 265 * 64 * 2 * 2


def test_models_hold_no_autograd_state(tiny_transformer, tiny_tokenizer):
    assert not any(p.requires_grad for p in tiny_transformer.parameters())
    assert not any(p.requires_grad for p in tiny_tokenizer.parameters())


def test_on_an_accelerator_the_ffn_chunks_only_beyond_the_workspace(monkeypatch):
    from infinity_core import devices
    from infinity_core.model import layers
    gpu = devices.DeviceInfo("cuda", capability=(9, 0))
    monkeypatch.setattr(layers, "ffn_rows_for", lambda device, hidden, dtype: devices.ffn_rows(gpu, hidden, dtype))
    ffn = _ffn()
    x_BLC = torch.randn(2, 700, 64, generator=torch.Generator().manual_seed(1))
    calls, mlp = [], FFN._mlp
    monkeypatch.setattr(FFN, "_mlp", lambda self, x: calls.append(x.shape) or mlp(self, x))
    ffn(x_BLC)
    assert calls == [torch.Size([2, 700, 64])]  # 1400 rows of 256: far below 512 MiB, one pass (was 3)
    monkeypatch.setattr(devices, "WORKSPACE_BYTES", 256 * 4 * 600)  # a budget of 600 rows
    calls.clear()
    assert_within(ffn(x_BLC), mlp(ffn, x_BLC), 2 * mlp_bound(x_BLC, ffn.fc1, ffn.fc2), "workspace-chunked FFN")
    assert [s[0] for s in calls] == [600, 600, 200]
