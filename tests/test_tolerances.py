"""The rounding bounds the numerically sensitive tests compare with (tests/tolerances.py): they hold for float32
computations in other orders, and they are far tighter than the errors of wrong code."""
import pytest
import torch
import torch.nn.functional as F

import conftest
from tolerances import assert_within, attention_bound, mlp_bound, resize_bound, sum_bound

GEN = torch.Generator().manual_seed(0)


def _left_to_right(x: torch.Tensor) -> float:
    """A float32 running sum, one rounding per term (torch.cumsum accumulates in double on the CPU)."""
    total = torch.zeros((), dtype=x.dtype)
    for term in x:
        total += term
    return total.item()


def test_a_sum_in_any_order_is_within_its_bound():
    x = torch.randn(4096, generator=GEN) * torch.logspace(-3, 3, 4096)  # wide magnitudes: order matters
    exact, bound = x.double().sum().item(), sum_bound(x.numel(), x.double().abs().sum().item())
    orders = (x, x.flip(0), x[x.abs().argsort()], x[torch.randperm(x.numel(), generator=GEN)])
    sequential = [_left_to_right(o) for o in orders]
    pairwise = [o.sum().item() for o in orders]
    assert all(abs(s - exact) <= bound for s in sequential + pairwise)
    assert len(set(sequential)) > 1  # the orders really round differently
    assert abs(x[:-1].sum().item() - exact) > bound  # one term dropped is far outside


def test_attention_within_its_bound_and_a_wrong_row_far_outside():
    q, k, v = (torch.randn(1, 2, n, 16, generator=GEN) for n in (9, 30, 30))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    bound = attention_bound(q, k, v)
    assert_within(F.scaled_dot_product_attention(q, k, v), exact, bound, "fused")
    assert_within((q @ k.transpose(-2, -1) / 4).softmax(-1) @ v, exact, bound, "materialised")
    shifted = F.scaled_dot_product_attention(q.roll(1, 2), k, v)  # each row got its neighbour's query
    with pytest.raises(AssertionError, match="rounding bound"):
        assert_within(shifted, exact, bound, "shifted")


def test_an_mlp_in_chunks_within_its_bound_and_a_lost_bias_outside():
    fc1, fc2 = torch.nn.Linear(32, 128), torch.nn.Linear(128, 32)
    x = torch.randn(300, 32, generator=GEN)
    with torch.no_grad():
        mlp = lambda t: fc2(F.gelu(fc1(t), approximate="tanh"))  # noqa: E731
        one_pass, chunks = mlp(x), torch.cat([mlp(c) for c in x.split(7)])
        exact = fc2.double()(F.gelu(fc1.double()(x.double()), approximate="tanh"))
        bound = mlp_bound(x, fc1, fc2)
        assert_within(one_pass, exact, bound, "one pass")
        assert_within(chunks, exact, bound, "in chunks")
        assert ((one_pass - fc2.bias - exact).abs() > bound).any()


def test_a_bilinear_resize_within_its_bound():
    x = torch.randn(1, 3, 13, 21, generator=GEN) * 4
    got = F.interpolate(x, size=(40, 64), mode="bilinear")
    exact = F.interpolate(x.double(), size=(40, 64), mode="bilinear")
    assert_within(got, exact, resize_bound(64, x.abs().max().item()), "bilinear")


def test_a_kernel_level_that_pytorch_did_not_take_is_refused(monkeypatch):
    native = torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", native.lower())
    assert conftest._kernel_level_mismatch() is None
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2" if native.upper() == "DEFAULT" else "no_such_level")
    assert "PyTorch runs" in conftest._kernel_level_mismatch()
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert conftest._kernel_level_mismatch() is None and native in conftest.kernel_levels()
