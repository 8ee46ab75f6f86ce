"""Peak bytes of live tensors while a piece of code runs (CPU), for checking memory estimates."""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Counts every storage an op creates until the storage dies (views keep it alive); `peak` is the
    high-water mark. Storages that existed before (weights, cached tables) are not counted."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output on an input's storage is a view or an in-place result: nothing new (a view of a
        # tensor made before the run, e.g. a cached table, must not count as an allocation)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live and key not in inputs:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)  # the storage, which views keep alive
        return out

    def _free(self, key):
        self.current -= self.live.pop(key, 0)
