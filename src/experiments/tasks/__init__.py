"""Lightning task modules: a plain model plus its loss, metrics and optimisation, one per task kind.

Task kinds are registered by name (:func:`register_task_kind`); a data spec's ``task`` picks one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from experiments.data.spec import DataSpec
from experiments.errors import UserError
from experiments.tasks.base import Task
from experiments.tasks.classification import ClassificationTask
from experiments.tasks.forecasting import ForecastingTask
from experiments.tasks.registry import register_task_kind, task_kind, task_kinds
from experiments.tasks.regression import RegressionTask

__all__ = [
    "ClassificationTask",
    "ForecastingTask",
    "RegressionTask",
    "Task",
    "register_task_kind",
    "task_for",
    "task_kind",
    "task_kinds",
]


def task_for(spec: DataSpec, model: nn.Module, **options: Any) -> Task:
    """The task module of the kind that ``spec.task`` names, built from the spec."""
    kind = task_kind(spec.task)
    try:
        return kind.from_spec(spec, model, **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"task {spec.task} ({kind.__name__}): {err}") from None
