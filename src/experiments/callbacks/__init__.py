"""Callbacks, one module each: a run's history as files (:class:`History`), its random state in
checkpoints for exact resumes (:class:`ResumeState`) and a guard that stops it when the loss
stops being finite (:class:`FiniteGuard`), a progress bar in a terminal (:class:`ProgressBar`) and
the test set's confusion matrix in TensorBoard (:class:`ConfusionMatrix`).

Their configs are one file each in ``conf/callbacks/`` (``# @package callbacks.<name>``), composed in
``conf/callbacks/default.yaml``; ``callbacks=[default,early_stopping]`` adds one. A callback of your
own is a class here or in your package, and one YAML file beside them.
"""

from experiments.callbacks.confusion import ConfusionMatrix, plot_confusion_matrix
from experiments.callbacks.finite import FiniteGuard, NonFiniteError
from experiments.callbacks.history import History, plot_learning_curves
from experiments.callbacks.progress import ProgressBar
from experiments.callbacks.resume import ResumeState

__all__ = [
    "ConfusionMatrix",
    "FiniteGuard",
    "History",
    "NonFiniteError",
    "ProgressBar",
    "ResumeState",
    "plot_confusion_matrix",
    "plot_learning_curves",
]
