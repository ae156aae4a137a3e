"""A run's history as files: ``history.csv`` as training goes and ``learning_curves.png`` at its end."""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from experiments.engine.tensorboard import log_png, tensorboard_loggers
from experiments.errors import printable
from experiments.plotting import pyplot
from experiments.runs import write_atomic


class History(Callback):
    """One row per epoch of every logged epoch metric, written to ``history.csv`` as training goes.

    ``parameters`` names single-number model parameters to record after each epoch's update;
    by default those the model reports itself (``reported_parameters``: ``w`` and ``b`` of the
    one-neuron model). Each row is also printed, restricted to ``print_columns``
    when given, so that a run reads like a Keras log. ``history.csv`` is rewritten at most every
    ``min_write_interval`` seconds while training (a run of 300 one-batch epochs would otherwise
    spend a tenth of its time rewriting it) and always when fitting ends or fails; the rows are
    also in every checkpoint. The learning curves are drawn into ``learning_curves.png`` when
    fitting ends.
    """

    def __init__(
        self,
        dirpath: str,
        parameters: Sequence[str] = (),
        print_columns: Sequence[str] | None = None,
        verbose: bool = True,
        min_write_interval: float = 1.0,
    ) -> None:
        if not min_write_interval >= 0:
            raise ValueError(f"min_write_interval must be >= 0 seconds, got {min_write_interval}")
        self.dirpath = Path(dirpath)
        self.min_write_interval = min_write_interval
        self._written = -math.inf
        self.parameters = list(parameters)
        self.print_columns = list(print_columns) if print_columns is not None else None
        self.verbose = verbose
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = 0.0
        # The epoch whose validation ran last (Lightning's callback_metrics keep an earlier
        # validation's values through epochs that don't validate).
        self._validated_epoch: int | None = None
        self._added = False  # whether this fit added a row (a resume with nothing left adds none)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._added = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()  # a run resumed inside an epoch starts timing here

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
        validated = self._validated_epoch == trainer.current_epoch
        for name, value in sorted(trainer.callback_metrics.items()):
            if validated or not name.startswith("val/"):  # an epoch without validation has none
                row[name] = float(value)
        model = getattr(pl_module, "model", pl_module)
        # The model's own single-number parameters (Linear's w and b), unless the config names others.
        for name in self.parameters or list(getattr(model, "reported_parameters", ())):
            number = float(model.get_parameter(name).detach().reshape(-1)[0])
            pl_module.log(name, number, on_epoch=True, on_step=False)
            row[name] = number
        row["seconds"] = time.perf_counter() - self._epoch_start
        # The prefetched validation of the next epoch doesn't exist yet; rows of resumed runs
        # replace the epochs they repeat. A new list each epoch (a checkpoint taken in memory
        # keeps the list it was given), filtered only when a row is repeated.
        kept = (
            self.rows
            if not self.rows or self.rows[-1]["epoch"] < row["epoch"]
            else [r for r in self.rows if r["epoch"] < row["epoch"]]
        )
        self.rows = [*kept, row]
        self._added = True
        if trainer.is_global_zero:
            if time.monotonic() - self._written >= self.min_write_interval:
                self._write_csv()
            if self.verbose:
                self._print(row)

    def _columns(self) -> list[str]:
        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        return list(columns)

    def _write_csv(self) -> None:
        path = self.dirpath / "history.csv"
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(handle: Any) -> None:
            writer = csv.DictWriter(handle, fieldnames=self._columns())
            writer.writeheader()
            writer.writerows(self.rows)

        write_atomic(path, write)
        self._written = time.monotonic()

    def _print(self, row: dict[str, Any]) -> None:
        columns = self.print_columns or [c for c in row if c not in ("epoch", "seconds")]
        if len(self.rows) == 1 or row is self.rows[0]:
            print(" ".join(["epoch", *columns]), flush=True)
        values = [_fmt(row.get(c)) for c in columns]
        print(" ".join([str(row["epoch"]), *values]), flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fit that ended no epoch (a resume with nothing left to train) leaves the files as
        # they are: its checkpoint's rows may lack the last, partial epoch of a max_steps stop.
        if trainer.is_global_zero and self.rows and self._added:
            self._write_csv()
            path = self.dirpath / "learning_curves.png"
            # The main metric is the task kind's (Task.metric_names), where it names one.
            metric = next(iter(getattr(pl_module, "metric_names", ())), None)
            plot_learning_curves(self.rows, path, metric=metric)
            if tensorboard_loggers(trainer):  # TensorBoard's IMAGES tab, too: the file's own bytes
                log_png(trainer, "learning_curves", path.read_bytes())

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A run stopped early (pruned by a sweep, or crashed) still shows how far it got.
        self.on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The rows of a checkpoint that anyone may have written: numbers under printable names
        # only, so that nothing but a run's history reaches history.csv and the terminal.
        rows = state_dict.get("rows")
        self.rows = [_clean_row(row) for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
        self.rows = [row for row in self.rows if isinstance(row.get("epoch"), int)]


def _clean_row(row: dict[Any, Any]) -> dict[str, Any]:
    return {
        printable(str(name)): value
        for name, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and printable(str(name))
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def plot_learning_curves(
    rows: Sequence[dict[str, Any]], path: Path, metric: str | None = None, keep_open: bool = False
) -> Any:
    """Loss, and ``metric`` where the rows hold it (``acc`` for ``val/acc``), of train and validation
    against epochs; saved to ``path``. Returns the figure when ``keep_open`` (the caller closes it)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    panels = ["loss"] + ([metric] if metric and any(f"val/{metric}" in r for r in rows) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(e, r[f"{split}/{name}"]) for e, r in zip(epochs, rows) if f"{split}/{name}" in r]
            if points:  # markers while they can be told apart (hundreds of them only cost time)
                ax.plot(*zip(*points), style if len(points) <= 60 else "-", markersize=3, label=f"{split}/{name}")
        # Five ticks an axis at most: laying out their labels is most of the time of drawing this.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(path.parent.name)
    # Fixed margins: tight_layout renders the figure once more to measure it, a third of the time
    # of drawing this picture at the end of every run.
    fig.subplots_adjust(left=0.13 / len(panels), right=0.98, bottom=0.12, top=0.88, wspace=0.25)
    # The fastest zlib level: a tenth of the drawing time for a file a tenth larger. Drawn into
    # memory and written in one piece: a full disk leaves the previous picture, not half of one.
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    write_atomic(path, lambda handle: handle.write(png.getbuffer()), binary=True)
    if keep_open:
        return fig
    plt.close(fig)
    return None
