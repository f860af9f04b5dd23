"""Model <-> flat float32 vector.

The global model of a federation *is* a flat ``float32`` vector: it is what secure
aggregation sums, what strategies update, what :func:`p2pfl.learning.hash_vector`
hashes, and what late joiners fetch. A module is mapped to that vector by walking
``model.state_dict()`` in its (insertion) order and concatenating every
**floating-point** entry, flattened in C order.

Buffers, explicitly:

* Floating-point buffers that are part of the state dict (e.g. BatchNorm's
  ``running_mean``/``running_var``) **are in the vector**. The global model must be
  fully determined by the vector, otherwise two peers holding the same vector would
  evaluate different models and a late joiner could not rebuild it. The price: such
  buffers are averaged, clipped and fed to server optimizers like parameters. The
  built-in models have no BatchNorm, and we recommend models without it (GroupNorm or
  LayerNorm have no running statistics).
* Integer buffers (BatchNorm's ``num_batches_tracked``) are **not** in the vector and
  are left untouched by :func:`vector_to_model`; they stay local.
* Non-persistent buffers are not in the state dict and therefore not in the vector.

Parameters stored in another floating dtype (float16, bfloat16, float64) are
converted to float32 in the vector and back to their own dtype on load.
Complex entries are rejected.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["model_to_vector", "num_params", "vector_layout", "vector_to_model"]


def _entries(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The state-dict entries that make up the vector, in state-dict order."""
    out = []
    for name, t in model.state_dict().items():
        if t.is_complex():
            raise TypeError(f"state-dict entry {name!r} is complex; not supported")
        if t.is_floating_point():
            out.append((name, t))
    return out


def vector_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each slice of the vector, in vector order."""
    return [(name, tuple(t.shape)) for name, t in _entries(model)]


def num_params(model: nn.Module) -> int:
    """Length of :func:`model_to_vector` for this model."""
    return sum(t.numel() for _, t in _entries(model))


def model_to_vector(model: nn.Module) -> np.ndarray:
    """Copy the model's floating-point state into a new 1-D float32 numpy array.

    Works for models on any device (values are copied to host memory). The result
    never aliases the model's storage.
    """
    parts = [t.detach().reshape(-1).to("cpu", torch.float32).numpy() for _, t in _entries(model)]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def vector_to_model(model: nn.Module, vec: np.ndarray) -> nn.Module:
    """Load ``vec`` into ``model`` in place and return the model.

    ``vec`` must be 1-D with exactly :func:`num_params` elements; it is read as
    float32 (other floating dtypes are converted). Raises ``ValueError`` on a shape
    mismatch and ``TypeError`` on a non-floating array.
    """
    arr = np.asarray(vec)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"expected a floating-point vector, got dtype {arr.dtype}")
    entries = _entries(model)
    n = sum(t.numel() for _, t in entries)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"vector has shape {arr.shape}, model needs ({n},)")
    src = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for _, t in entries:
            k = t.numel()
            # state_dict tensors share storage with the module: copy_ writes through.
            t.copy_(src[offset : offset + k].view(t.shape))
            offset += k
    return model
