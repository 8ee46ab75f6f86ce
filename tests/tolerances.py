"""Tolerances for two float computations of the same function, derived from rounding, not from one CPU.

Two kernels (fused vs materialised attention, AVX-512 vs AVX2 vs PyTorch's plain loops, oneDNN vs BLAS)
sum in different orders and use different exp approximations, so their results differ by a few units
in the last place; how many depends on the machine. A fixed `atol` measured on one machine is therefore
a guess. These bounds are the textbook forward error bounds (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., §3.1 and §3.5): a sum of n terms computed in any order is off by at
most gamma(n) times the sum of the terms' magnitudes, with gamma(n) = n*u / (1 - n*u) and u the unit
roundoff (half the dtype's eps). They hold for any summation order, so for every kernel; a logic error
(a wrong row, slice or mask) is orders of magnitude larger.
"""
from __future__ import annotations

import torch

# Relative error of one exp, in units of u: SLEEF's vectorised exp (ATen's AVX2 / AVX-512 kernels) is off by at
# most 1 ulp (2u); the fused CPU attention kernel uses ATen's `exp_u20`, documented at up to 20 ulp (40u).
EXP_ROUNDINGS = 40
# tanh-GELU is about eight operations (a cube, products, a sum, one tanh of at most a few ulp): at most 16u
# of |h| absolute; its slope is at most 1.13, so an error in h passes through at most 1.2 times.
GELU_ROUNDINGS, GELU_SLOPE = 16, 1.2


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's gamma_n: the relative error bound of n successive roundings."""
    nu = n * unit_roundoff(dtype)
    assert nu < 1, "too many roundings for this dtype: the bound says nothing"
    return nu / (1 - nu)


def sum_bound(terms: int, magnitude, dtype: torch.dtype = torch.float32):
    """|computed - exact| for a sum of `terms` values whose magnitudes add up to at most `magnitude`,
    in any order. Two such computations differ by at most twice this."""
    return gamma(terms, dtype) * magnitude


def resize_bound(side: int, magnitude, dtype: torch.dtype = torch.float32):
    """|computed - exact| for a bilinear (or one-slice trilinear) resize of values of at most `magnitude`
    whose source coordinates run up to `side`. Each output is a convex combination of the 4 nearest cells:
    the coordinate is off by at most u * (side + 1), which moves a pair of weights by as much (so the output
    by that times 2 * magnitude), and the products and sums round 5 times more (gamma(5) * magnitude)."""
    return (2 * unit_roundoff(dtype) * (side + 1) + gamma(5, dtype)) * magnitude


def linear_bound(x: torch.Tensor, weight: torch.Tensor, bias=None, input_error=None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per element, |computed - exact| of x @ weight.T + bias in `dtype` in any summation order (any BLAS
    blocking, any number of rows per call), plus what an error already in x (`input_error`) carries over."""
    x, w = x.double(), weight.double()
    terms = x.abs() @ w.abs().T + (0 if bias is None else bias.double().abs())
    bound = gamma(x.shape[-1] + 1, dtype) * terms
    return bound if input_error is None else bound + input_error @ w.abs().T


def mlp_bound(x: torch.Tensor, fc1, fc2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per element, how far fc2(gelu_tanh(fc1(x))) in `dtype` can be from exact, in any summation order."""
    h = torch.nn.functional.linear(x.double(), fc1.weight.double(), fc1.bias.double())
    g = torch.nn.functional.gelu(h, approximate="tanh")
    h_error = linear_bound(x, fc1.weight, fc1.bias, dtype=dtype)
    g_error = GELU_SLOPE * h_error + GELU_ROUNDINGS * unit_roundoff(dtype) * h.abs()
    return linear_bound(g, fc2.weight, fc2.bias, input_error=g_error, dtype=dtype)


def attention_bound(q_BHLc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor, attn_mask=None,
                    scale: float | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per output element, how far any order of computing softmax(q k^T * scale) v in `dtype` can be from
    the exact value (first order in u, then doubled: the doubling covers the second-order terms and the
    fused kernel's rescaling of its running sums, a few roundings per key block).

    - score s_ij = scale * sum_t q_it k_jt: |ds_ij| <= gamma(c + 1) * scale * sum_t |q_it k_jt| =: e_ij
    - weight p_ij = exp(s_ij - m_i) / sum_l exp(s_il - m_i): the exponent is off by at most
      e_ij + max_l e_il + u |s_ij - m_i|, exp adds EXP_ROUNDINGS * u, the n-term denominator gamma(n) and
      the division u, so |dp_ij| / p_ij <= 2 E_i + gamma(n) + (EXP_ROUNDINGS + 1) u with E_i = max_j (e_ij +
      u |s_ij - m_i|)
    - output o_ic = sum_j p_ij v_jc: |do_ic| <= max_j |dp_ij| / p_ij * sum_j p_ij |v_jc| + gamma(n) sum_j p_ij |v_jc|
    """
    c, n, u = q_BHLc.shape[-1], k_BHLc.shape[-2], unit_roundoff(dtype)
    q, k, v = q_BHLc.double(), k_BHLc.double(), v_BHLc.double()
    scale = c ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale
    e = gamma(c + 1, dtype) * scale * (q.abs() @ k.abs().transpose(-2, -1))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, -torch.inf)
    p = s.softmax(-1)
    seen = p > 0  # masked keys carry no weight and no error
    spread = (s - s.amax(-1, keepdim=True)).abs().nan_to_num(0.0)
    worst_exponent = torch.where(seen, e + u * spread, torch.zeros_like(e)).amax(-1, keepdim=True)
    weight_error = 2 * worst_exponent + gamma(n, dtype) + (EXP_ROUNDINGS + 1) * u
    return 2 * (weight_error + gamma(n, dtype)) * (p @ v.abs())


def assert_within(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, what: str = ""):
    """Every element of `got` within its `bound` of `exact` (a float64 computation of the same function)."""
    err = (got.double() - exact.double()).abs()
    worst = (err / bound).max().item()
    assert worst <= 1, f"{what}: error {err.max().item():.3g} is {worst:.2f}x its rounding bound"
