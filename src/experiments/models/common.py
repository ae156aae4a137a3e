"""Small helpers shared by the models."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


class ShapeError(ValueError):
    """The model cannot take the data's input or output shape (the data, not an option, is the misfit)."""


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (one of :data:`_ACTIVATIONS`)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(sorted(_ACTIVATIONS))}") from None


def as_shape(shape: Sequence[int] | int, what: str) -> tuple[int, ...]:
    """Validate a per-sample shape and return it as a tuple of positive ints."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
        raise ShapeError(f"{what} must be a non-empty list of positive integers, got {list(dims)}")
    return dims


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(steps, features) of an input: ``(T, F)`` sequences as they are, ``(T,)`` as one feature,
    and ``(1, H, W)`` single-channel images as H rows of W pixels."""
    if len(input_shape) == 1:
        return input_shape[0], 1
    if len(input_shape) == 2:
        return input_shape[0], input_shape[1]
    if len(input_shape) == 3 and input_shape[0] == 1:
        return input_shape[1], input_shape[2]
    raise ShapeError(
        f"a sequence model reads (steps, features) sequences or (1, H, W) images, not input shape {list(input_shape)}"
    )
