"""A synthetic data set big enough for mid-epoch checkpoints, and a callback that kills its own
process with SIGKILL at a chosen point, so that a test can interrupt a real run deterministically.

Importable by the runs a test starts: the tests add this folder to PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint

from experiments.data.base import InMemoryDataModule
from experiments.data.spec import DataSpec
from experiments.tasks import ClassificationTask


class BlobsDataModule(InMemoryDataModule):
    """``classes`` Gaussian blobs in ``features`` dimensions, drawn from ``data_seed``."""

    def __init__(
        self,
        batch_size: int = 32,
        n_train: int = 256,
        n_val: int = 64,
        n_test: int = 64,
        features: int = 8,
        classes: int = 3,
        data_seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size)
        self.sizes = (n_train, n_val, n_test)
        self.features = features
        self.classes = classes
        self.data_seed = data_seed

    @property
    def spec(self) -> DataSpec:
        return DataSpec(
            input_shape=(self.features,), output_shape=(self.classes,), task="classification", num_classes=self.classes
        )

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.data_seed)
        centres = 2.0 * torch.randn(self.classes, self.features, generator=generator)
        splits = []
        for n in self.sizes:
            y = torch.randint(0, self.classes, (n,), generator=generator)
            x = centres[y] + torch.randn(n, self.features, generator=generator)
            splits.append((x, y))
        self.train_set, self.val_set, self.test_set = splits


class KillAt(Callback):
    """SIGKILL this process at ``hook`` once ``global_step`` (optimizer steps) or ``epoch`` is reached.

    Callbacks run before Lightning's checkpoint callbacks, so a kill in ``on_train_batch_end``
    lands after the optimizer step and before that step's checkpoint is written. With fused
    steps, ``on_train_batch_end`` runs once per chunk: the kill lands at the end of the first
    chunk that reaches ``step``.
    """

    def __init__(self, hook: str, step: int = -1, epoch: int = -1) -> None:
        if hook not in ("train_batch_end", "validation_batch_end", "train_epoch_start"):
            raise ValueError(f"unknown hook {hook!r}")
        self.hook, self.step, self.epoch = hook, step, epoch

    def _maybe_kill(self, trainer: L.Trainer, hook: str) -> None:
        reached = (
            (0 <= self.step <= trainer.global_step) if hook == "train_batch_end" else trainer.global_step == self.step
        )
        if hook == self.hook and (reached or trainer.current_epoch == self.epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._maybe_kill(trainer, "train_batch_end")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if not trainer.sanity_checking:
            self._maybe_kill(trainer, "validation_batch_end")

    def on_train_epoch_start(self, trainer: L.Trainer, *args: object) -> None:
        self._maybe_kill(trainer, "train_epoch_start")


class CopyCheckpointAt(Callback):
    """Copy ``checkpoints/last.ckpt`` to ``to`` at the first training batch end at or after optimizer
    step ``step``: with fused steps, a step checkpoint written inside a chunk is still the file
    then (the chunk's end is no step checkpoint's), so a test can resume from inside a chunk."""

    def __init__(self, step: int, to: str) -> None:
        self.step, self.to, self.copied = step, Path(to), False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if not self.copied and trainer.global_step >= self.step:
            import shutil

            shutil.copy(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt", self.to)
            self.copied = True


HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a run started by a test: the sources and this folder on the path."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    return env


def start(module: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    """Start ``python -m experiments.<module> args...`` without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that a test can end it with its children
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal() -> None:
    # A command typed in a terminal takes Ctrl-C. A test suite started in the background by a
    # non-interactive shell (as CI may run it) ignores SIGINT, and a child inherits that: its
    # Python would then never turn Ctrl-C into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m experiments.<module> args...`` to the end, as a user would. On a timeout
    the whole process group goes, DDP children included."""
    process = start(module, *args, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def call_cli(module: str, *args: str) -> tuple[int, str, str]:
    """Run an entry point in this process exactly as its console script does (``run_cli`` around
    the Hydra main, ``sys.argv`` as typed): returns the exit code, stdout and stderr."""
    import contextlib
    import importlib
    import io

    from experiments.cli import run_cli

    entry = importlib.import_module(f"experiments.{module}")
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [f"experiments.{module}", *args]
    os.environ.pop("HYDRA_FULL_ERROR", None)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(entry._main)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return code, out.getvalue(), err.getvalue()


def completed_results(root: Path) -> list[Path]:
    """Every metrics.json under ``root`` that claims a completed run."""
    found = []
    for path in root.rglob("metrics.json"):
        try:
            if json.loads(path.read_text()).get("status") == "completed":
                found.append(path)
        except ValueError:
            found.append(path)  # half a file posing as a result counts too
    return found


class OwnStepTask(ClassificationTask):
    """A user's task that steps its own way (it overrides optimizer_step), so it can't be fused."""

    steps_taken = 0

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        type(self).steps_taken += 1
        return super().optimizer_step(*args, **kwargs)


class TermAt(Callback):
    """Send SIGTERM to this process when built (``hook="init"``: while the run is being set up,
    outside Lightning), at ``on_test_start`` (``"test_start"``: while the best checkpoint is
    tested), or at the first ``on_train_batch_end`` at or after optimizer step ``step``."""

    def __init__(self, hook: str, step: int = 0) -> None:
        if hook not in ("init", "test_start", "train_batch_end"):
            raise ValueError(f"unknown hook {hook!r}")
        self.hook, self.step, self.sent = hook, step, False
        if hook == "init":
            os.kill(os.getpid(), signal.SIGTERM)

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_test_start(self, trainer: L.Trainer, *args: object) -> None:
        if self.hook == "test_start":
            self._send()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.hook == "train_batch_end" and trainer.global_step >= self.step:
            self._send()


def fit_hooks() -> list[str]:
    """Every hook of Lightning's Callback that a fit can call (from the class itself, so that a hook a
    later Lightning adds is covered too): all but those of test, predict, the sanity check and errors."""
    skip = ("test", "predict", "sanity", "exception")
    names = [
        n for n, v in vars(Callback).items() if callable(v) and (n.startswith("on_") or n in ("setup", "teardown"))
    ]
    return [n for n in names if not any(word in n for word in skip)]


class KillAtHook(Callback):
    """SIGKILL this process at the ``occurrence``-th call of callback hook ``hook`` in this process
    (the sanity check's validation not counted). Every fit hook is overridden, so the fused steps of
    ``experiments.engine`` call the per-step ones (``on_before_backward``, ...) at every inner step."""

    def __init__(self, hook: str, occurrence: int = 1) -> None:
        if hook not in fit_hooks():
            raise ValueError(f"unknown hook {hook!r}")
        self.hook, self.occurrence, self.seen = hook, occurrence, 0

    def _called(self, name: str, trainer: Any) -> None:
        if name != self.hook or getattr(trainer, "sanity_checking", False):
            return
        self.seen += 1
        if self.seen == self.occurrence:
            os.kill(os.getpid(), signal.SIGKILL)


def _hook(name: str) -> Any:
    def hook(self: KillAtHook, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._called(name, trainer)

    hook.__name__ = name
    return hook


for _name in fit_hooks():
    setattr(KillAtHook, _name, _hook(_name))


class BrokenBlobs(BlobsDataModule):
    """Blobs whose ``setup`` raises a plain exception (a bug, not a setting) with a message of
    several lines, a pipe and an escape sequence in it."""

    def setup(self, stage: str | None = None) -> None:
        raise RuntimeError("disk said no\nsecond line | with a pipe\n\x1b[31mthird line\x1b[0m")


class SlowSetupBlobs(BlobsDataModule):
    """Blobs whose ``setup`` (reading the data) takes ``setup_seconds``."""

    def __init__(self, setup_seconds: float = 0.5, **options: Any) -> None:
        super().__init__(**options)
        self.setup_seconds = setup_seconds
        self._read = False

    def setup(self, stage: str | None = None) -> None:
        if not self._read:
            import time

            time.sleep(self.setup_seconds)
            self._read = True
        super().setup(stage)


class TermAfterCheckpoints(Checkpoint):
    """Send SIGTERM at the end of epoch ``epoch`` (1-based) after the checkpoint callbacks have taken
    theirs (``hook="train_epoch_end"``; a ``Checkpoint``, so Lightning calls it after them), or at
    the first validation batch of that epoch (``"validation_batch_start"``): where Lightning's loops
    look for the signal next, past the point where ``last.ckpt`` is taken."""

    def __init__(self, hook: str, epoch: int) -> None:
        if hook not in ("train_epoch_end", "validation_batch_start"):
            raise ValueError(f"unknown hook {hook!r}")
        self.hook, self.epoch, self.sent = hook, epoch, False

    def _send(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook and not self.sent and trainer.current_epoch + 1 == self.epoch:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_epoch_end(self, trainer: L.Trainer, *args: object) -> None:
        self._send(trainer, "train_epoch_end")

    def on_validation_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if not trainer.sanity_checking:
            self._send(trainer, "validation_batch_start")


class SleepInFirstSlurmStart(Callback):
    """Sleep ``seconds`` at the end of every training epoch in the first start of a SLURM job (not
    after a requeue, not outside SLURM): a run that lasts until its job is requeued or reaches its
    time limit, without keeping a core busy, and then ends quickly. Its results are unchanged."""

    def __init__(self, seconds: float) -> None:
        first_start = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0
        self.seconds = seconds if first_start else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.seconds:
            import time

            time.sleep(self.seconds)


class OddLogsTask(ClassificationTask):
    """A user's task that logs beyond epoch means: a maximum and an on-step value in validation, a
    number and a tensor at the epoch ends (what the engine's own epoch loop hands to Lightning's
    own ``log``, or sums itself)."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("val/max_input", batch[0].max(), reduce_fx="max")
        self.log("val/first_target", batch[1][0].float(), on_step=True, on_epoch=False)
        self.log("val/batches", 1.0, reduce_fx="sum")

    def on_validation_epoch_end(self) -> None:
        self.log("val/constant", torch.tensor(2.5), prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.log("half_epoch", self.current_epoch / 2)
        self.log("hidden", torch.tensor(1.0), logger=False)
