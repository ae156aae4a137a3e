from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """What a data module yields, so that the entry point can size a model and pick its task.

    Shapes are per sample, without the batch dimension: a model maps ``(N, *input_shape)`` to
    ``(N, *output_shape)``. ``num_classes`` is set for classification (2 means binary, with one
    logit per sample). ``task`` names a registered task kind (``experiments.tasks.task_kinds()``:
    classification, regression, forecasting, or one of your own), which picks the task module.
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    task: str
    num_classes: int | None = None
