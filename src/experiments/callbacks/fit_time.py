"""Seconds spent fitting, summed over every process that trained a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from experiments.runs import read_json


class FitTime(Callback):
    """Seconds spent fitting, summed over every process that trained the run.

    Kept in every checkpoint (this callback's state), so that a run resumed once or ten times
    reports its whole fit time in ``metrics.json``, not only that of its last segment. Time after
    the last checkpoint of a killed process is not counted: the resume recomputes that work, and
    its time is counted then.
    """

    def __init__(self) -> None:
        self.before = 0.0
        self._start: float | None = None
        # What a completed run reported after its last checkpoint was written (see carry_over).
        self.floor = 0.0

    def carry_over(self, metrics_file: Path, step: int) -> None:
        """A run resumed from the checkpoint at which it completed reported more fit time than that
        checkpoint holds (the end of its fit came after it): start from what it reported."""
        previous = read_json(metrics_file)
        if previous.get("status") == "completed" and previous.get("steps") == step:
            self.floor = float(previous.get("fit_seconds") or 0.0)

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def start(self) -> None:
        """Start the clock when ``trainer.fit`` is called: the data module's ``setup`` (reading the
        data) runs before any callback hook of the fit, and it is part of the fit's time."""
        self._start = time.perf_counter()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._start is None:  # a fit that the caller did not clock from its start
            self._start = time.perf_counter()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.before, self._start = self.seconds(), None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = max(float(state_dict.get("seconds", 0.0)), self.floor)
