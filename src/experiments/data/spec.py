from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["classification", "regression", "forecasting"]


@dataclass(frozen=True)
class DataSpec:
    """What a data module yields, so that the entry point can size a model and pick its task.

    Shapes are per sample, without the batch dimension: a model maps ``(N, *input_shape)`` to
    ``(N, *output_shape)``. ``num_classes`` is set for classification (2 means binary, with one
    logit per sample).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    task: TaskKind
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.task == "classification" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError("a classification DataSpec needs num_classes >= 2")
