"""A call when training has begun: after Lightning restored a resumed run's checkpoint whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import Callback


class TrainingStarted(Callback):
    """Calls ``then`` once, at ``on_train_start``: by then Lightning has restored every part of the
    checkpoint a run continues from (weights, optimizer, loops) and accepted its settings (a
    checkpoint of epoch 5 with ``max_epochs=3`` is refused before), so what ``then`` writes is
    never written for a refused resume."""

    def __init__(self, then: Callable[[], Any]) -> None:
        self.then: Callable[[], Any] | None = then

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        then, self.then = self.then, None
        if then is not None:
            then()
