"""The primer's MNIST recipe through the framework, Lightning and a plain PyTorch loop, side by side.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_mnist.py [--repeats 3] [--epochs 5] [override ...]
    PYTHONPATH=src python scripts/bench_mnist.py --accelerator gpu   # every way on one CUDA GPU, float32

One torch thread per trial makes the timings repeat within a few percent; with two threads on
two cores, any other load on the machine moves a trial by up to 2x.

Each trial runs in its own fresh process (so peak memory is that trial's own), the ways
alternate, and the table shows the median of the repeats. The framework trial is exactly
``python -m experiments.train`` (experiment mnist_mlp: checkpoints, history.csv, TensorBoard,
test of the best checkpoint), timed around ``trainer.fit`` (reading the data included) as
``metrics.json`` reports it; every way also reports the process's CPU time over the same window
(on this project's machine it follows the wall clock within 1%: trials scatter because the
shared host's speed moves, not because time is taken away from them). The
plain loop is what a careful PyTorch user writes: the same tensors, model, optimiser, batch
order seeding and per-epoch validation, no files, and no Lightning imported. The framework
runs ``trainer.steps_per_execution=auto`` (128 optimizer steps per Lightning step for this
model); the ``unfused`` way is the same command with one step per Lightning step. The next way is
the floor under any framework built on Lightning's Trainer: the same task and data through a
bare Trainer (no callbacks, logger, checkpoints or files). The fourth is the plain loop on
Lightning Fabric: the floor for a loop of our own on Lightning's device, precision and DDP layer.
The fifth is that loop doing the work every run of the framework does (deterministic
algorithms, a finite-loss check and the epoch's training metrics each step; validation loss and
accuracy, TensorBoard, ``best.ckpt``, ``last.ckpt`` and ``history.csv`` each epoch), without
any callbacks or configuration: the floor for a framework of our own on Fabric.
Extra arguments are Hydra overrides given to the framework trial only (for trying trainer
settings). With ``--accelerator gpu`` every way keeps the data and the model on the GPU in
float32 (the framework as ``trainer=gpu trainer.precision=32-true``), and the clock stops only
after the GPU has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
    "framework": "experiments.train",
    "unfused": "experiments.train, trainer.steps_per_execution=1",
    "lightning": "bare Lightning Trainer, same task",
    "fabric": "the plain loop on Lightning Fabric",
    "fabric_run": "that loop doing a run's work",
}


TRAIN_STEPS_PER_EPOCH = -(-(60000 - 6000) // 32)  # the primer's split and batch size


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_overrides(accelerator: str) -> list[str]:
    return ["trainer=gpu", "trainer.precision=32-true"] if accelerator == "gpu" else []


def _synchronize(accelerator: str) -> None:
    import torch

    if accelerator == "gpu":
        torch.cuda.synchronize()


def plain_trial(
    epochs: int, seed: int, accelerator: str = "cpu", fabric: bool = False, run_work: bool = False
) -> dict[str, float]:
    """The plain loop; with ``fabric``, the same loop with Lightning Fabric's device, precision
    and DDP layer (``fabric.setup``, ``fabric.backward``): what a loop of our own, instead of
    Lightning's Trainer, would cost; with ``run_work`` too, that loop doing a run's work."""
    import csv
    import math

    import torch
    import torch.nn.functional as F

    from experiments.data import IDXDataModule
    from experiments.models import MLP

    # The data module (imported for the very same tensors) brings Lightning in, and importing
    # Lightning slows every optimizer step (see experiments.config.build_trainer); a plain
    # PyTorch program has no Lightning.
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    torch.manual_seed(seed)
    started = time.perf_counter()  # like the framework's fit_seconds (trainer.fit), it includes reading the data
    cpu_started = time.process_time()
    data = IDXDataModule(str(ROOT / "data" / "mnist"), seed=seed)
    data.setup()
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        tuple(t.to(device) for t in split) for split in (data.train_set, data.val_set, data.test_set)
    )
    model = MLP((1, 28, 28), (10,), hidden=[128], activation="relu").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    backward = torch.Tensor.backward
    if fabric:
        import lightning as L
        from lightning.fabric.loggers import TensorBoardLogger

        run_dir = Path(tempfile.mkdtemp()) if run_work else None
        runner = L.Fabric(accelerator=accelerator, devices=1, loggers=[TensorBoardLogger(run_dir)] if run_dir else [])
        model, optimizer = runner.setup(model, optimizer)
        backward = runner.backward
    if run_work:
        torch.use_deterministic_algorithms(True)
        history: list[dict[str, float]] = []
        best = -1.0

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Accuracy and, with ``run_work``, mean loss, from one pass over ``x``."""
        model.eval()
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(x), 1000):
                logits = model(x[i : i + 1000])
                correct += int((logits.argmax(1) == y[i : i + 1000]).sum())
                if run_work:
                    loss_sum += float(F.cross_entropy(logits, y[i : i + 1000], reduction="sum"))
        model.train()
        return correct / len(x), loss_sum / len(x)

    steps = 0
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed + epoch)).to(device)
        sums = torch.zeros(2, device=device)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            logits = model(x_train[batch])
            loss = F.cross_entropy(logits, y_train[batch])
            if run_work:
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss {loss.item()} at step {steps + 1}")
                sums += torch.stack(
                    [loss.detach(), (logits.detach().argmax(1) == y_train[batch]).float().mean()]
                ) * len(batch)
            optimizer.zero_grad()
            backward(loss)
            optimizer.step()
            steps += 1
        val_acc, val_loss = evaluate(x_val, y_val)
        if run_work:
            train_loss, train_acc = (sums / len(order)).tolist()
            row = {
                "epoch": epoch + 1,
                "train/loss": train_loss,
                "train/acc": train_acc,
                "val/loss": val_loss,
                "val/acc": val_acc,
            }
            runner.log_dict(row, step=steps)
            state = {
                "model": model,
                "optimizer": optimizer,
                "epoch": epoch,
                "step": steps,
                "rng": torch.get_rng_state(),
            }
            runner.save(run_dir / "last.ckpt", state)
            if val_acc > best:
                best = val_acc
                runner.save(run_dir / "best.ckpt", state)
            history.append(row)
            with open(run_dir / "history.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(history)
    _synchronize(accelerator)
    fit_seconds = time.perf_counter() - started
    fit_cpu_seconds = time.process_time() - cpu_started
    if run_work:
        shutil.rmtree(run_dir)
    return {
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "steps": steps,
        "test_acc": evaluate(x_test, y_test)[0],
        "rss_mib": peak_rss_mib(),
    }


def _compose(epochs: int, seed: int, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from experiments.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=mnist_mlp", f"trainer.max_epochs={epochs}", f"seed={seed}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.callbacks.history.verbose = False
        del cfg.hydra
    return cfg


def framework_trial(epochs: int, seed: int, overrides: list[str]) -> dict[str, float]:
    from omegaconf import open_dict

    from experiments import engine
    from experiments.train import train

    # The process's CPU time over trainer.fit (the window of fit_seconds), beside the wall clock:
    # a trial that waited, rather than ran slowly, shows the difference.
    cpu = {"seconds": 0.0}
    fit = engine.Trainer.fit

    def timed_fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return fit(self, *args, **kwargs)
        finally:
            cpu["seconds"] += time.process_time() - started

    engine.Trainer.fit = timed_fit  # type: ignore[method-assign]
    cfg = _compose(epochs, seed, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        with open_dict(cfg):
            cfg.paths.output_dir = run_dir
        metrics = train(cfg)
    steps = epochs * TRAIN_STEPS_PER_EPOCH
    return {
        "fit_seconds": metrics["fit_seconds"],
        "fit_cpu_seconds": cpu["seconds"],
        "steps": steps,
        "test_acc": metrics["test"]["test/acc"],
        "rss_mib": peak_rss_mib(),
    }


def lightning_trial(epochs: int, seed: int, accelerator: str = "cpu") -> dict[str, float]:
    import lightning as L
    from omegaconf import OmegaConf

    from experiments.config import build

    cfg = _compose(epochs, seed, _device_overrides(accelerator))
    L.seed_everything(seed, verbose=False)
    datamodule, task = build(cfg)
    # Lightning's own Trainer, one optimizer step per Lightning step, with the run's settings.
    settings = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if k not in ("_target_", "steps_per_execution", "num_threads")
    }
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)  # as experiments.engine.Trainer does
    with tempfile.TemporaryDirectory() as root_dir:
        settings["default_root_dir"] = root_dir
        trainer = L.Trainer(**settings, callbacks=[], logger=False, enable_checkpointing=False)
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.fit(task, datamodule=datamodule)
        _synchronize(accelerator)
        fit_seconds = time.perf_counter() - started
        fit_cpu_seconds = time.process_time() - cpu_started
        tested = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    steps = epochs * TRAIN_STEPS_PER_EPOCH
    return {
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "steps": steps,
        "test_acc": tested["test/acc"],
        "rss_mib": peak_rss_mib(),
    }


def run_child(way: str, args: argparse.Namespace, own_threads: bool = False) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        way,
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--accelerator",
        args.accelerator,
        *args.overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if own_threads:  # as a user runs it: the run chooses its threads (trainer.num_threads=auto)
        env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{way} trial failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--ways", default=",".join(WAYS), help="which ways to run, comma-separated (plain always runs)")
    parser.add_argument(
        "--under-load",
        action="store_true",
        help="time the framework as a user runs it (its own thread choice), idle and with one busy "
        "process on the machine, alternating",
    )
    parser.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the framework trial")
    args = parser.parse_args()
    if args.child:
        if args.child in ("plain", "fabric", "fabric_run"):
            result = plain_trial(
                args.epochs,
                args.seed,
                args.accelerator,
                fabric=args.child != "plain",
                run_work=args.child == "fabric_run",
            )
        elif args.child == "lightning":
            result = lightning_trial(args.epochs, args.seed, args.accelerator)
        else:
            fusion = ["trainer.steps_per_execution=1"] if args.child == "unfused" else []
            result = framework_trial(
                args.epochs, args.seed, _device_overrides(args.accelerator) + fusion + args.overrides
            )
        print(json.dumps(result))
        return

    if args.under_load:
        under_load(args)
        return
    unknown = set(args.ways.split(",")) - set(WAYS)
    if unknown:
        sys.exit(f"--ways: unknown {', '.join(sorted(unknown))}; choose from {', '.join(WAYS)}")
    ways = {way: label for way, label in WAYS.items() if way == "plain" or way in args.ways.split(",")}
    results: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    for repeat in range(args.repeats):
        for way in ways if repeat % 2 == 0 else reversed(ways):
            result = run_child(way, args)
            results[way].append(result)
            print(
                f"repeat {repeat + 1} {way:9s} fit {result['fit_seconds']:6.2f}s (CPU {result['fit_cpu_seconds']:6.2f}s)  "
                f"test acc {result['test_acc']:.4f}",
                flush=True,
            )

    def median(way: str, key: str) -> float:
        return statistics.median(r[key] for r in results[way])

    print(
        f"\nMNIST primer recipe, {args.epochs} epochs, batch 32, median of {args.repeats} "
        f"on {args.accelerator} (torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}, cpus: {os.cpu_count()})"
    )
    print("| way | fit seconds | fit CPU seconds | steps/s | peak RSS MiB | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for way, label in ways.items():
        seconds = median(way, "fit_seconds")
        print(
            f"| {label} | {seconds:.2f} | {median(way, 'fit_cpu_seconds'):.2f} | "
            f"{results[way][0]['steps'] / seconds:.0f} | {median(way, 'rss_mib'):.0f} | "
            f"{median(way, 'test_acc') * 100:.2f}% |"
        )
    print()
    for way in (w for w in ways if w != "plain"):
        for key, clock in (("fit_seconds", "wall"), ("fit_cpu_seconds", "CPU")):
            ratios = sorted(w[key] / p[key] for w, p in zip(results[way], results["plain"]))
            print(
                f"{clock} ratio {way} / plain: median of repeats {statistics.median(ratios):.3f} "
                f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}; ratio of medians {median(way, key) / median('plain', key):.3f})"
            )


def under_load(args: argparse.Namespace) -> None:
    """Fit time of the framework idle and beside one busy process (a pure-Python loop)."""
    idle, loaded = [], []
    for repeat in range(args.repeats):
        idle.append(run_child("framework", args, own_threads=True)["fit_seconds"])
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded.append(run_child("framework", args, own_threads=True)["fit_seconds"])
        finally:
            busy.kill()
            busy.wait()
        print(
            f"repeat {repeat + 1}: idle {idle[-1]:.2f}s, one busy process {loaded[-1]:.2f}s "
            f"({loaded[-1] / idle[-1]:.2f}x)",
            flush=True,
        )
    print(
        f"\nunder load / idle: {statistics.median(loaded) / statistics.median(idle):.2f} "
        f"(median fit {statistics.median(idle):.2f}s idle, {statistics.median(loaded):.2f}s loaded; "
        f"cpus: {os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
