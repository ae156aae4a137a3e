"""XOR through the framework, a bare Lightning Trainer and a plain PyTorch loop; and a 30-seed sweep.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_xor.py [--repeats 3] [--sweep]

``experiment=xor`` is 300 full-batch epochs (4 samples) with validation every epoch: all of its
time is per-epoch overhead, none of it arithmetic. Each trial runs in a fresh process and the
ways alternate; the table shows medians. The framework trial is ``experiments.train.train`` (every
file a run leaves), timed around ``trainer.fit`` as ``metrics.json`` reports it. The bare Trainer
trains the same task on the same data with validation every epoch, and no callbacks, logger or
checkpoints. The plain loop does the same 300 steps and 300 validations by hand.

``--sweep`` also times ``python -m experiments.train -m experiment=xor seed=range(30)`` (wall
time of the whole command, as a user waits for it) and counts the seeds that solve the truth
table, from the sweep's ``summary.csv``. ``--root DIR`` runs the sweep with the sources in
``DIR/src`` (for timing another checkout with the same command).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WAYS = {
    "plain": "plain PyTorch loop",
    "lightning": "bare Lightning Trainer, same task",
    "framework": "experiments.train",
}


def _compose(seed: int) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from experiments.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=xor", f"seed={seed}"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.callbacks.history.verbose = False
        del cfg.hydra
    return cfg


def plain_trial(seed: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from experiments.models import MLP

    torch.manual_seed(seed)
    started = time.perf_counter()
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    model = MLP((2,), (1,), hidden=[8], activation="tanh")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = F.binary_cross_entropy_with_logits(model(x).view(-1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x).view(-1)
            float(F.binary_cross_entropy_with_logits(logits, y)), float(((logits >= 0) == (y == 1)).float().mean())
        model.train()
    fit_seconds = time.perf_counter() - started
    with torch.no_grad():
        acc = float(((model(x).view(-1) >= 0) == (y == 1)).float().mean())
    return {"fit_seconds": fit_seconds, "test_acc": acc}


def lightning_trial(seed: int) -> dict[str, float]:
    import lightning as L
    from omegaconf import OmegaConf

    from experiments.config import build

    cfg = _compose(seed)
    L.seed_everything(seed, verbose=False)
    datamodule, task = build(cfg)
    settings = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if k not in ("_target_", "steps_per_execution", "num_threads")
    }
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # as experiments.engine.Trainer does
    with tempfile.TemporaryDirectory() as root_dir:
        settings["default_root_dir"] = root_dir
        trainer = L.Trainer(**settings, callbacks=[], logger=False, enable_checkpointing=False)
        started = time.perf_counter()
        trainer.fit(task, datamodule=datamodule)
        fit_seconds = time.perf_counter() - started
        tested = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    return {"fit_seconds": fit_seconds, "test_acc": tested["test/acc"]}


def framework_trial(seed: int) -> dict[str, float]:
    from omegaconf import open_dict

    from experiments.train import train

    cfg = _compose(seed)
    with tempfile.TemporaryDirectory() as run_dir:
        with open_dict(cfg):
            cfg.paths.output_dir = run_dir
        metrics = train(cfg)
    return {"fit_seconds": metrics["fit_seconds"], "test_acc": metrics["test"]["test/acc"]}


def run_child(way: str, seed: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", way, "--seed", str(seed)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{way} trial failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(root: Path, seeds: int) -> tuple[float, int, int]:
    """Wall seconds of the 30-seed multirun, seeds solved, seeds run."""
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "PYTHONPATH": str(root / "src")}
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.train",
                "-m",
                "experiment=xor",
                f"seed=range({seeds})",
                f"hydra.sweep.dir={workdir}/sweep",
            ],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"sweep failed:\n{done.stderr[-3000:]}")
        with open(Path(workdir) / "sweep" / "summary.csv") as handle:
            rows = list(csv.DictReader(handle))
    solved = sum(1 for r in rows if r.get("test/acc") and float(r["test/acc"]) == 1.0)
    return seconds, solved, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="also time the 30-seed multirun")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose src/ the sweep runs")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trial = {"plain": plain_trial, "lightning": lightning_trial, "framework": framework_trial}[args.child]
        print(json.dumps(trial(args.seed)))
        return

    ways = [w for w in WAYS if w in args.ways.split(",")]
    results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    for repeat in range(args.repeats):
        for way in ways if repeat % 2 == 0 else reversed(ways):
            result = run_child(way, args.seed)
            results[way].append(result)
            print(
                f"repeat {repeat + 1} {way:9s} fit {result['fit_seconds']:6.3f}s  test acc {result['test_acc']:.2f}",
                flush=True,
            )
    if ways:
        print(
            f"\nexperiment=xor, 300 epochs, median of {args.repeats} "
            f"(torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}, cpus: {os.cpu_count()})"
        )
        print("| way | fit seconds | test accuracy |")
        print("| --- | --- | --- |")
        for way in ways:
            print(
                f"| {WAYS[way]} | {statistics.median(r['fit_seconds'] for r in results[way]):.3f} | "
                f"{statistics.median(r['test_acc'] for r in results[way]):.2f} |"
            )
        if "framework" in results and "lightning" in results:
            ratios = [f["fit_seconds"] / b["fit_seconds"] for f, b in zip(results["framework"], results["lightning"])]
            print(
                f"\nratio framework / bare Trainer: {statistics.median(ratios):.2f} "
                f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    if args.sweep:
        seconds, solved, count = sweep(args.root, args.seeds)
        print(f"\n{args.seeds}-seed multirun ({args.root}): {seconds:.1f} s wall, solved {solved} of {count}")


if __name__ == "__main__":
    main()
