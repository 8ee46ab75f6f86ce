"""A strict stand-in accelerator for CPU-only CI: the `meta` device watched by a TorchDispatchMode.

Weights and activations live on `meta` (shapes and dtypes, no data, no memory, no compute), the host
is `cpu`. Under `DeviceChecker`:
- an op whose tensor arguments live on two devices fails (`DeviceMixError`), except 0-dim CPU
  tensors, which PyTorch passes to device kernels as scalars;
- copies between host and device are counted (bytes and calls); a copy out of `meta` returns
  placeholder data of the right shape and dtype (floats 0.5: a valid probability, bools True: the
  finiteness checks pass, other ints 0) so that host code can go on;
- syncs are counted: ops that need device data on the host (`.item()`, `bool(t)`, `nonzero`, ...)
  get a placeholder answer (True for a bool, as in a healthy run), and every device-to-host copy is a
  sync as well (its caller waits);
- device "kernels" are counted: every op on a device tensor that is not a view or an allocation.
`split(label)` closes a phase (the sampler's callback calls it after each scale) so the tallies
can be read per scale. Nothing here is imported by the pack.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("meta")
HOST = torch.device("cpu")
aten = torch.ops.aten

_COPIES = {aten._to_copy.default, aten.copy_.default}
_SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default,
                   aten._unique2.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
_NOT_KERNELS = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
                aten.detach.default, aten.alias.default, aten._unsafe_view.default, aten.lift_fresh.default,
                aten.new_empty.default, aten.new_empty_strided.default}
_MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
_SDPA = aten.scaled_dot_product_attention.default
# composite ops that are one kernel (one library call) on an accelerator: counted whole
_WHOLE = {_SDPA, aten.linear.default, aten.matmul.default, aten.einsum.default, aten.layer_norm.default,
          aten.group_norm.default, aten.conv2d.default, aten.softmax.int, aten.upsample_trilinear3d.vec,
          aten.upsample_bilinear2d.vec, aten.upsample_nearest2d.vec, aten.adaptive_avg_pool3d.default,
          aten.adaptive_avg_pool2d.default}
_LINEAR = {aten.linear.default, aten.matmul.default, aten.einsum.default}
_OUTPUTS: dict = {}  # (op, argument metadata) -> output metadata: meta kernels are slow Python


def _key(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, value.device.type)
    if isinstance(value, (list, tuple)):
        return (type(value), *(_key(v) for v in value))
    if isinstance(value, dict):
        return tuple((k, _key(v)) for k, v in value.items())
    return (type(value), value)


def _outputs(func, args, kwargs):
    """Run a pure device op on `meta`, or rebuild its outputs from the metadata of an earlier run (the
    outputs of a non-view, non-mutating op depend only on the metadata of its inputs)."""
    key = (func, _key(args), _key(kwargs))
    spec = _OUTPUTS.get(key)
    if spec is None:
        out = func(*args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        if all(isinstance(t, torch.Tensor) and t.device == DEVICE for t in outs):
            _OUTPUTS[key] = (isinstance(out, tuple), [(t.shape, t.stride(), t.dtype) for t in outs])
        return out
    is_tuple, specs = spec
    outs = tuple(torch.empty_strided(shape, stride, dtype=dtype, device=DEVICE) for shape, stride, dtype in specs)
    return outs if is_tuple else outs[0]


def _in_place_outputs(func, args, kwargs):
    """An in-place op on `meta` changes no metadata: checked by one real run per argument metadata."""
    key = (func, _key(args), _key(kwargs))
    if key not in _OUTPUTS:
        func(*args, **kwargs)
        _OUTPUTS[key] = True
    return args[0]


class DeviceMixError(AssertionError):
    """An op mixed host and device tensors: on a real accelerator this raises or copies implicitly."""


@dataclass
class Tally:
    kernels: int = 0
    matmuls: int = 0
    attention: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    h2d_copies: int = 0
    d2h_copies: int = 0
    syncs: int = 0
    ops: Counter = field(default_factory=Counter)

    def add(self, other: "Tally") -> None:
        for name in ("kernels", "matmuls", "attention", "h2d_bytes", "d2h_bytes", "h2d_copies", "d2h_copies",
                     "syncs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ops.update(other.ops)

    @property
    def moved_bytes(self) -> int:
        return self.h2d_bytes + self.d2h_bytes


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _placeholder(shape, dtype, device=HOST) -> torch.Tensor:
    if dtype.is_floating_point or dtype.is_complex:
        return torch.full(shape, 0.5, dtype=dtype, device=device)
    if dtype == torch.bool:  # the answers of a healthy run: the finiteness checks pass
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _devices(args, kwargs) -> set[torch.device]:
    return {t.device for t in _tensors((args, kwargs)) if not (t.device.type == "cpu" and t.dim() == 0)}


_COMPOSITE: dict = {}


def _decomposes(func) -> bool:
    """Composite ops arrive whole under inference_mode; `to` must be split (copies hide in it), fused
    ones stay one kernel, as on an accelerator."""
    if func not in _COMPOSITE:
        _COMPOSITE[func] = func not in _WHOLE and torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeImplicitAutograd")
    return _COMPOSITE[func]


def _in_place(func) -> bool:
    first = func._schema.arguments[0] if func._schema.arguments else None
    return first is not None and first.alias_info is not None and first.alias_info.is_write


class DeviceChecker(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing runs torch.compile here; the wrapper would cost ~10 us per op

    def __init__(self):
        super().__init__()
        self.phases: list[tuple[str, Tally]] = []
        self.current = Tally()
        self.mixing: list[str] = []

    # ---- reading the tallies ----------------------------------------------------------------------
    def split(self, label: str) -> None:
        self.phases.append((label, self.current))
        self.current = Tally()

    @property
    def total(self) -> Tally:
        out = Tally()
        for _, tally in self.phases:
            out.add(tally)
        out.add(self.current)
        return out

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        if self.mixing and exc[0] is None:  # also when the code under test swallowed the error
            raise DeviceMixError("ops mixing devices:\n  " + "\n  ".join(self.mixing[:10]))
        return out

    # ---- the dispatch hook --------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket is aten.to:
            return self._to(func, args, kwargs)
        if _decomposes(func):
            with self:  # under inference_mode composite ops (to, linear, sdpa) arrive whole: see their parts
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if func in _COPIES:
            return self._copy(func, args, kwargs)
        devices = _devices(args, kwargs)
        if len(devices) > 1:
            message = f"{func}: {sorted(str(d) for d in devices)}"
            self.mixing.append(message)
            raise DeviceMixError(message)
        on_device = DEVICE in devices
        if on_device and (func in _SCALAR_READS or func in _DATA_DEPENDENT):
            self.current.syncs += 1
            self.current.ops[f"SYNC {func}"] += 1
            return self._answer_without_data(func, args)
        if not on_device or func.is_view or func in _NOT_KERNELS:
            return func(*args, **kwargs)
        self.current.kernels += 1
        self.current.ops[str(func.overloadpacket.__name__)] += 1
        self.current.matmuls += func in _MATMULS or func in _LINEAR
        self.current.attention += func is _SDPA
        if func._schema.is_mutable:
            return _in_place_outputs(func, args, kwargs) if _in_place(func) else func(*args, **kwargs)
        return _outputs(func, args, kwargs)

    def _to(self, func, args, kwargs):
        """`Tensor.to` without its decomposition (the commonest op here): self when nothing changes, else
        one `_to_copy` (a cast on the device, or a transfer)."""
        bound = {}
        for i, arg in enumerate(func._schema.arguments):
            bound[arg.name] = args[i] if i < len(args) else kwargs.get(
                arg.name, arg.default_value if arg.has_default_value() else None)
        src = bound["self"]
        if isinstance(bound.get("other"), torch.Tensor):
            bound["device"], bound["dtype"] = bound["other"].device, bound["other"].dtype
        device = torch.device(bound.get("device") or src.device)
        dtype = bound.get("dtype") or src.dtype
        if device == src.device and dtype == src.dtype and not bound.get("copy"):
            return src
        return self.__torch_dispatch__(aten._to_copy.default, (), (src,), {"dtype": dtype, "device": device})

    def _copy(self, func, args, kwargs):
        if func is aten._to_copy.default:
            src = args[0]
            dst_device = torch.device(kwargs.get("device") or src.device)
            dst = None
        else:
            dst, src = args[0], args[1]
            dst_device = dst.device
        if src.device == dst_device:
            out = func(*args, **kwargs)
            if dst_device == DEVICE:
                self.current.kernels += 1
                self.current.ops[str(func.overloadpacket.__name__)] += 1
            return out
        if {src.device.type, dst_device.type} != {DEVICE.type, HOST.type}:
            raise DeviceMixError(f"{func}: copy between {src.device} and {dst_device}")
        if dst_device == DEVICE:  # host to device: the real op works (meta ignores the data)
            self.current.h2d_bytes += _nbytes(src)
            self.current.h2d_copies += 1
            return func(*args, **kwargs)
        self.current.d2h_bytes += _nbytes(src)
        self.current.d2h_copies += 1
        self.current.syncs += 1  # the host waits for the device to produce the data
        self.current.ops["SYNC copy to host"] += 1
        if dst is None:
            return _placeholder(src.shape, kwargs.get("dtype") or src.dtype)
        return dst.copy_(_placeholder(dst.shape, dst.dtype))

    @staticmethod
    def _answer_without_data(func, args):
        if func is aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else (0 if not t.dtype.is_floating_point else 0.5)
        if func in (aten.is_nonzero.default, aten.equal.default):
            return False
        if func is aten.nonzero.default:
            return torch.empty((0, args[0].dim()), dtype=torch.long, device=DEVICE)
        raise NotImplementedError(f"{func} needs device data: no placeholder for it")


def on_device(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A module's parameters and buffers moved to the stand-in device (no data, no memory)."""
    return module.to(device=DEVICE, dtype=dtype)


def offload(module: torch.nn.Module) -> torch.nn.Module:
    """Put a module's tensors on the host, as ComfyUI's lowvram leaves the modules that do not fit
    (the ops layers cast them per call). `to_empty` leaves the pages untouched: no real memory is
    used for weights nobody reads."""
    return module.to_empty(device=HOST)
