"""Callbacks, one module each: a run's history as files (:class:`History`), its random state in
checkpoints for exact resumes (:class:`ResumeState`) and a guard that stops it when the loss
stops being finite (:class:`FiniteGuard`), a progress bar in a terminal (:class:`ProgressBar`) and
the figures that task kinds list in their ``plots`` (:class:`FigureCallback`): the test set's
confusion matrix in TensorBoard (:class:`ConfusionMatrix`) and forecasts against the truth
(:class:`ForecastFigure`); the fit time of a run over all its segments (:class:`FitTime`), the
pruning of an Optuna trial (:class:`OptunaPruning`) and a call once training has begun
(:class:`TrainingStarted`).

Their configs are one file each in ``conf/callbacks/`` (``# @package callbacks.<name>``), composed in
``conf/callbacks/default.yaml``; ``callbacks=[default,early_stopping]`` adds one. A callback of your
own is a class here or in your package, and one YAML file beside them.
"""

from experiments.callbacks.confusion import ConfusionMatrix, plot_confusion_matrix
from experiments.callbacks.figures import FigureCallback
from experiments.callbacks.finite import FiniteGuard, NonFiniteError
from experiments.callbacks.fit_time import FitTime
from experiments.callbacks.forecasts import ForecastFigure, plot_forecasts
from experiments.callbacks.history import History, plot_learning_curves
from experiments.callbacks.progress import ProgressBar
from experiments.callbacks.pruning import OptunaPruning
from experiments.callbacks.resume import ResumeState
from experiments.callbacks.started import TrainingStarted

__all__ = [
    "ConfusionMatrix",
    "FigureCallback",
    "FiniteGuard",
    "FitTime",
    "ForecastFigure",
    "History",
    "NonFiniteError",
    "OptunaPruning",
    "ProgressBar",
    "ResumeState",
    "TrainingStarted",
    "plot_confusion_matrix",
    "plot_forecasts",
    "plot_learning_curves",
]
