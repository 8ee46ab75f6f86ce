"""Transformer building blocks on their own: the row-chunked FFN (CPU chunks; accelerators from a budget)."""
import torch

from infinity_core import ops
from infinity_core.layers import FFN


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
    assert chunked.shape == (2, 700, 64) and torch.equal(chunked, one_pass)
    assert [s[0] for s in calls] == [512, 512, 376]

    calls.clear()
    ffn(x_BLC[:, :500])  # 1000 rows: below two chunks, one pass
    assert calls == [torch.Size([2, 500, 64])]

    calls.clear()
    stored_bf16 = _ffn(dtype=torch.bfloat16)  # every chunk would cast the weights again: one pass
    stored_bf16(x_BLC)
    assert calls == [torch.Size([2, 700, 64])]


def test_on_an_accelerator_the_ffn_chunks_only_beyond_the_workspace(monkeypatch):
    from infinity_core import devices, layers
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
    assert torch.equal(ffn(x_BLC), mlp(ffn, x_BLC))
    assert [s[0] for s in calls] == [600, 600, 200]
