"""Drawing without a display: matplotlib's pyplot on the Agg backend, for every figure of a run or
a sweep (learning curves, confusion matrix, forecasts, a sweep's objective and Optuna's figures)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only: no window, no display needed).

    Imported on first use: matplotlib costs 0.6 s to import, and a run draws only when it ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
