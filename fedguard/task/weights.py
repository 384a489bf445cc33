"""Model weights as a list of NumPy arrays, the form Flower and the aggregators exchange."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["get_weights", "set_weights"]


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Copy every ``state_dict`` entry, in order, to a float32 CPU array.

    The arrays are copies: changing them never touches the model, and training the
    model never changes arrays already returned.
    """
    return [
        t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()
    ]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Copy ``weights`` (in ``state_dict`` order) into ``model`` in place.

    Everything is checked before anything is written, so a rejected update leaves the
    model unchanged.

    Raises
    ------
    ValueError
        Wrong number of arrays, or an array whose shape differs from its parameter's or
        that holds non-numeric, NaN or infinite values; the message names the parameter.
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(
            f"set_weights: expected {len(state)} arrays (one per state_dict entry), "
            f"got {len(weights)}"
        )
    arrays = []
    for (name, tensor), weight in zip(state.items(), weights, strict=True):
        array = np.asarray(weight)
        if array.shape != tuple(tensor.shape):
            raise ValueError(
                f"set_weights: parameter {name!r}: expected shape {tuple(tensor.shape)}, "
                f"got {array.shape}"
            )
        if array.dtype.kind not in "biuf":  # bool, signed/unsigned int, float
            raise ValueError(
                f"set_weights: parameter {name!r}: expected numbers, got {array.dtype}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"set_weights: parameter {name!r}: contains NaN or infinite values")
        arrays.append(array)
    with torch.no_grad():
        for tensor, array in zip(state.values(), arrays, strict=True):
            # state_dict tensors share storage with the parameters: copy_ updates the model.
            tensor.copy_(torch.from_numpy(np.array(array, copy=True)).to(tensor.dtype))
