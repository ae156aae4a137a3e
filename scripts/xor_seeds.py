"""How often does an XOR recipe solve the truth table? Trains it once per seed, as the CLI does.

    python scripts/xor_seeds.py                          # experiment=xor, seeds 0..29
    python scripts/xor_seeds.py --experiment xor_primer  # the primer's 2-2-1 recipe

A seed counts as solved when the best checkpoint's rounded predictions are exactly [0, 1, 1, 0]
(test accuracy 1.0 on the four rows).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from experiments.config import CONFIG_DIR
from experiments.train import train


def solves(experiment: str, seed: int, workdir: Path) -> tuple[bool, float, float]:
    """Train one seed; return (solved, test loss, seconds)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"seed={seed}"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(workdir / f"seed{seed}")
        del cfg.hydra
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        metrics = train(cfg)
    return metrics["test"]["test/acc"] == 1.0, metrics["test"]["test/loss"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="xor")
    parser.add_argument("--seeds", type=int, default=30, help="seeds 0..N-1")
    args = parser.parse_args()
    solved = []
    with tempfile.TemporaryDirectory() as workdir:
        print("seed solved test_loss seconds")
        for seed in range(args.seeds):
            ok, loss, seconds = solves(args.experiment, seed, Path(workdir))
            solved.append(ok)
            print(f"{seed} {'yes' if ok else 'no'} {loss:.4f} {seconds:.1f}", flush=True)
    print(f"experiment={args.experiment}: solved {sum(solved)} of {len(solved)} seeds")


if __name__ == "__main__":
    main()
