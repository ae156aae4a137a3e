"""XOR through the framework, the issue's minimal Lightning module and a plain PyTorch loop, side
by side in one process; a per-epoch breakdown; and the 30-seed sweep's trials per second.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_xor.py [--repeats 7] [--ways ...] [--sweep N]

``experiment=xor`` is 300 full-batch epochs (4 samples) with validation every epoch: all of its
time is per-epoch overhead, none of it arithmetic. Every way runs once to warm up, then
``--repeats`` rounds, the order of the ways rotating each round; ratios are taken per round (the
same round, adjacent in time) and reported as median [min-max], in wall and in CPU seconds (all
threads of the process: less sensitive than the wall clock to other processes on a shared
machine). One torch thread.

Ways (``--ways``, comma-separated):

- ``plain``: the loop a PyTorch user writes: step, then the validation loss and accuracy read to
  Python, each epoch;
- ``minimal``: the issue's floor, exactly: a LightningModule whose ``training_step`` returns the
  loss and whose ``validation_step`` logs ``val/loss``, on a ``DataLoader`` of the four rows,
  ``Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
  enable_model_summary=False, num_sanity_val_steps=0)``, Lightning as it ships;
- ``minimal_tricks``: the same under the engine's process tricks of a fit
  (``experiments.engine.process.fitting_process_state``): the strictest floor;
- ``framework``: ``experiments.train.train`` on ``experiment=xor``, every file of a run written,
  ``trainer.fit`` clocked (``bench_common.TimedTrainer``);
- the breakdown, each the framework less one thing: ``lightning_loop``
  (``trainer.own_epoch_loop=false``: Lightning's own epoch, batch and validation loops),
  ``no_tensorboard`` (``logger=none``), ``no_checkpoints`` (neither ``best.ckpt`` nor
  ``last.ckpt``), ``no_history`` (no ``history.csv`` nor learning curves), ``unfused``
  (``trainer.steps_per_execution=1``).

``--sweep N`` then times ``python -m experiments.train -m experiment=xor 'seed=range(30)'`` N times,
as a user runs it (two forked workers on two cores, every run's files, one trial at a time per
worker), and counts the seeds that solve the truth table in each sweep's ``summary.csv``. ``--root DIR`` runs the sweeps with the sources in
``DIR/src`` (another checkout, same command).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from bench_common import ROOT, Clock, compose, quiet, ratios, spread  # noqa: E402

EPOCHS = 300
X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
Y = torch.tensor([0.0, 1.0, 1.0, 0.0])
# The framework less one thing: the overrides of each breakdown way.
BREAKDOWN = {
    "lightning_loop": ["trainer.own_epoch_loop=false"],
    "no_tensorboard": ["logger=none"],
    # (without the last option Lightning adds its own ModelCheckpoint, which writes a file every epoch)
    "no_checkpoints": [
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "+trainer.enable_checkpointing=false",
    ],
    "no_history": ["~callbacks.history"],
    "unfused": ["trainer.steps_per_execution=1"],
}
LABELS = {
    "plain": "plain PyTorch loop",
    "minimal": "the issue's minimal LightningModule (Lightning as shipped)",
    "minimal_tricks": "the same, with the engine's process tricks",
    "framework": "experiments.train, experiment=xor (every file)",
    "lightning_loop": "framework, Lightning's own epoch loop",
    "no_tensorboard": "framework, logger=none",
    "no_checkpoints": "framework, no best.ckpt/last.ckpt",
    "no_history": "framework, no history.csv/learning curves",
    "unfused": "framework, steps_per_execution=1",
}


def _mlp(seed: int) -> torch.nn.Module:
    from experiments.models import MLP

    torch.manual_seed(seed)
    return MLP((2,), (1,), hidden=[8], activation="tanh")


def plain(seed: int) -> tuple[float, float, float]:
    """(wall, CPU, accuracy) of the issue's plain loop."""
    import torch.nn.functional as F

    model = _mlp(seed)
    with Clock() as clock:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(EPOCHS):
            loss = F.binary_cross_entropy_with_logits(model(X).view(-1), Y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.eval()
            with torch.no_grad():
                logits = model(X).view(-1)
                float(F.binary_cross_entropy_with_logits(logits, Y)), float(((logits >= 0) == (Y == 1)).float().mean())
            model.train()
    with torch.no_grad():
        accuracy = float(((model(X).view(-1) >= 0) == (Y == 1)).float().mean())
    return clock.wall, clock.cpu, accuracy


_MINIMAL: list[type] = []


def _minimal_class() -> type:
    if not _MINIMAL:
        import lightning as L
        import torch.nn.functional as F

        class Minimal(L.LightningModule):
            def __init__(self, seed: int) -> None:
                super().__init__()
                self.model = _mlp(seed)

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                return F.binary_cross_entropy_with_logits(self.model(x).view(-1), y)

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                self.log("val/loss", F.binary_cross_entropy_with_logits(self.model(x).view(-1), y))

            def configure_optimizers(self) -> Any:
                return torch.optim.Adam(self.parameters(), lr=0.05)

        _MINIMAL.append(Minimal)
    return _MINIMAL[0]


def minimal(seed: int, tricks: bool = False) -> tuple[float, float, float]:
    """(wall, CPU, accuracy) of the issue's minimal module; ``tricks``: under the engine's process tricks."""
    import contextlib

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from experiments.engine.process import fitting_process_state

    module = _minimal_class()(seed)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_epochs=EPOCHS,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        loader = DataLoader(TensorDataset(X, Y), batch_size=4)
        state = fitting_process_state(1, fork_safe_cuda_check=False) if tricks else contextlib.nullcontext()
        with state, Clock() as clock:
            trainer.fit(module, train_dataloaders=loader, val_dataloaders=DataLoader(TensorDataset(X, Y), batch_size=4))
    with torch.no_grad():
        accuracy = float(((module.model(X).view(-1) >= 0) == (Y == 1)).float().mean())
    return clock.wall, clock.cpu, accuracy


def framework(seed: int, overrides: list[str] | None = None) -> tuple[float, float, float]:
    """(wall, CPU, test accuracy) of ``experiments.train.train`` on experiment=xor, fit clocked."""
    import bench_common

    from experiments.train import train

    with tempfile.TemporaryDirectory() as root:
        cfg = compose(
            ["experiment=xor", f"seed={seed}", "trainer._target_=bench_common.TimedTrainer", *(overrides or [])],
            Path(root) / "run",
        )
        metrics = train(cfg)
    wall, cpu = bench_common.TimedTrainer.fits[-1]
    return wall, cpu, metrics["test"]["test/acc"]


def ways() -> dict[str, Callable[[int], tuple[float, float, float]]]:
    table: dict[str, Callable[[int], tuple[float, float, float]]] = {
        "plain": plain,
        "minimal": minimal,
        "minimal_tricks": lambda seed: minimal(seed, tricks=True),
        "framework": framework,
    }
    for name, overrides in BREAKDOWN.items():
        table[name] = lambda seed, o=overrides: framework(seed, o)  # type: ignore[misc]
    return table


def fit_table(chosen: list[str], repeats: int, seed: int) -> None:
    table = ways()
    wall: dict[str, list[float]] = {w: [] for w in chosen}
    cpu: dict[str, list[float]] = {w: [] for w in chosen}
    for way in chosen:  # warm-up: imports and first calls
        with quiet():
            table[way](seed)
    for round_ in range(repeats):
        shift = round_ % len(chosen)
        for way in chosen[shift:] + chosen[:shift]:
            with quiet():
                seconds, cpu_seconds, accuracy = table[way](seed)
            if accuracy != 1.0:
                sys.exit(f"{way}: XOR not solved (accuracy {accuracy})")
            wall[way].append(seconds)
            cpu[way].append(cpu_seconds)
        print(f"round {round_ + 1}: " + "  ".join(f"{w} {wall[w][-1]:.3f}" for w in chosen), flush=True)

    base = "minimal" if "minimal" in chosen else chosen[0]
    print(
        f"\nexperiment=xor, {EPOCHS} epochs, fit seconds over {repeats} interleaved rounds, median [min-max]; "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"| way | fit s (wall) | fit s (CPU) | ms/epoch (CPU) | wall / {base} | CPU / {base} | CPU / plain |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for way in chosen:
        per_epoch = [c / EPOCHS * 1e3 for c in cpu[way]]
        to_plain = spread(ratios(cpu[way], cpu["plain"]), 2) if "plain" in cpu else "-"
        print(
            f"| {LABELS[way]} | {spread(wall[way])} | {spread(cpu[way])} | {spread(per_epoch, 2)} | "
            f"{spread(ratios(wall[way], wall[base]), 2)} | {spread(ratios(cpu[way], cpu[base]), 2)} | {to_plain} |"
        )
    ablations = [w for w in chosen if w in BREAKDOWN]
    if "framework" in chosen and ablations:
        print("\nPer-epoch breakdown (CPU): what the framework spends on each part, as the framework less it")
        print("| part | ms per epoch (framework minus the way without it), median [min-max] |")
        print("| --- | --- |")
        for way in ablations:
            saved = [(f - w) / EPOCHS * 1e3 for f, w in zip(cpu["framework"], cpu[way])]
            print(f"| {way}: {' '.join(BREAKDOWN[way])} | {spread(saved, 2)} |")
        if "minimal" in chosen:
            above = [(f - m) / EPOCHS * 1e3 for f, m in zip(cpu["framework"], cpu["minimal"])]
            print(f"| framework above the minimal module | {spread(above, 2)} |")


def sweep(root: Path, seeds: int) -> tuple[float, int, int]:
    """Wall seconds of the multirun as a user runs it, seeds solved, runs in its summary."""
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "PYTHONPATH": str(root / "src")}
        env.pop("OMP_NUM_THREADS", None)  # as a user runs it: each run chooses its threads
        command = [
            sys.executable,
            "-m",
            "experiments.train",
            "-m",
            "experiment=xor",
            f"seed=range({seeds})",
            f"hydra.sweep.dir={workdir}/sweep",
        ]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"sweep failed:\n{done.stderr[-3000:]}")
        with open(Path(workdir) / "sweep" / "summary.csv") as handle:
            rows = list(csv.DictReader(handle))
    solved = sum(1 for r in rows if r.get("test/acc") and float(r["test/acc"]) == 1.0)
    return seconds, solved, len(rows)


def sweep_table(root: Path, seeds: int, repeats: int) -> None:
    results: dict[str, list[float]] = {"parallel (two forked workers)": []}
    for repeat in range(repeats):
        for label in results:
            seconds, solved, count = sweep(root, seeds)
            if solved != seeds or count != seeds:
                sys.exit(f"{label} sweep: {solved} of {count} runs solved XOR, of {seeds} seeds")
            results[label].append(seconds)
            print(f"sweep {repeat + 1} {label}: {seconds:.1f} s wall, all {seeds} solved", flush=True)
    print(
        f"\n`-m experiment=xor 'seed=range({seeds})'`, {repeats} sweeps each, every run's files, cpus {os.cpu_count()}"
    )
    print("| launcher | wall s, median [min-max] | trials per second |")
    print("| --- | --- | --- |")
    for label, seconds in results.items():
        print(f"| {label} | {spread(seconds, 1)} | {spread([seeds / s for s in seconds], 2)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ways", default="plain,minimal,minimal_tricks,framework", help="comma-separated; none: no fits"
    )
    parser.add_argument("--sweep", type=int, default=0, metavar="N", help="time the 30-seed multirun N times each way")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose src/ the sweeps run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = [w for w in args.ways.split(",") if w and w != "none"]
    unknown = set(chosen) - set(LABELS)
    if unknown:
        sys.exit(f"--ways: unknown {', '.join(sorted(unknown))}; choose from {', '.join(LABELS)}")
    if chosen:
        fit_table(chosen, args.repeats, args.seed)
    if args.sweep:
        sweep_table(args.root, args.seeds, args.sweep)


if __name__ == "__main__":
    main()
