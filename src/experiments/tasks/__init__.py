"""Lightning task modules: a plain model plus its loss, metrics and optimisation."""

from __future__ import annotations

from typing import Any

from torch import nn

from experiments.data.spec import DataSpec
from experiments.tasks.base import Task
from experiments.tasks.classification import ClassificationTask
from experiments.tasks.forecasting import ForecastingTask
from experiments.tasks.regression import RegressionTask

__all__ = ["ClassificationTask", "ForecastingTask", "RegressionTask", "Task", "task_for"]


def task_for(spec: DataSpec, model: nn.Module, **options: Any) -> Task:
    """The task module that matches what a data module yields."""
    if spec.task == "classification":
        return ClassificationTask(model, num_classes=spec.num_classes or 2, **options)
    if spec.task == "regression":
        return RegressionTask(model, **options)
    if spec.task == "forecasting":
        return ForecastingTask(model, spec.input_shape, spec.output_shape, **options)
    raise ValueError(f"no task module for {spec.task!r} data yet")
