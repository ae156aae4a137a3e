"""Train, sweep and inspect MLPs, CNNs and LSTMs, on PyTorch Lightning and Hydra.

``experiments.run(*overrides)`` runs an experiment as ``python -m experiments.train`` does and returns
its metrics; ``experiments.load_run(run_dir)`` loads a finished run (see :mod:`experiments.api`).
Models (``experiments.models``), data modules (``experiments.data``) and task modules
(``experiments.tasks``) are importable on their own.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.api import Metrics, Run, load_run, run

__all__ = ["Metrics", "Run", "load_run", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import experiments.models` stays free of Lightning and Hydra.
    if name in __all__:
        had_cache_dir = "TORCHINDUCTOR_CACHE_DIR" in os.environ
        from experiments import api

        if (
            not had_cache_dir
        ):  # importing Lightning sets it (torch's compiler cache); torch sets it again when it needs it
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        return getattr(api, name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
