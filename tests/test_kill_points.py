"""Exact resume after a SIGKILL at every hook boundary of a fit: of a training epoch (batch, step
and epoch hooks, fused steps included), of a validation run, of a checkpoint being taken, and of
the start and end of the fit.

One run per model is killed at each hook of Lightning's ``Callback`` in turn (``fit_hooks``: taken
from the class, not chosen by hand), resumed each time with ``resume=``, and must end bit-identical
to a run never interrupted: weights, optimizer state, step count, ``history.csv`` row for row and
the test metrics. Each segment is a ``fork`` of this process (torch already imported), which trains
in-process and SIGKILLs itself at its kill point: no new Python process per kill.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from reliability_helpers import fit_hooks

sys.path.insert(0, str(Path(__file__).parent))  # reliability_helpers for the callbacks' _target_

COMMON = [
    "logger=none",
    "callbacks.history.verbose=false",
    # Every checkpoint written when taken, so that where each segment stops does not depend on time.
    "callbacks.last_checkpoint.min_write_interval=0",
    "callbacks.model_checkpoint.min_write_interval=0",
    "callbacks.history.min_write_interval=0",
    # Step checkpoints every 2 steps inside chunks of 3 (3, 3, 2 batches an epoch): checkpoints
    # inside chunks, at chunk ends, and one owed to an epoch's end.
    "checkpoint_every_n_steps=2",
    "trainer.steps_per_execution=3",
]
MODELS = {
    # 64 samples in batches of 8: 8 steps an epoch; dropout and shuffling make the random state and
    # the loader position matter. Validation: 4 batches of 8.
    "mlp": [
        "experiment=xor",
        "name=blobs",
        "data._target_=reliability_helpers.BlobsDataModule",
        "+data.n_train=64",
        "+data.n_val=32",
        "+data.n_test=32",
        "data.batch_size=8",
        "+data.eval_batch_size=8",
        "model.hidden=[16]",
        "model.dropout=0.2",
        "trainer.max_epochs=16",
    ],
    # experiment=sine_lstm shrunk: 16 steps in, 4 out, patches of 4; 8 steps an epoch, validation 3 batches.
    "lstm": [
        "experiment=sine_lstm",
        "data.num_rows=420",
        "data.input_length=16",
        "data.horizon=4",
        "data.batch_size=32",
        "data.eval_batch_size=16",
        "window.patch_len=4",
        "model.hidden_size=8",
        "trainer.max_epochs=16",
    ],
}
# Hooks called once per fit: killed at their first call. The end of the fit comes last (it is
# reached only once the run has trained to its end).
ONCE = ("setup", "on_fit_start", "on_train_start", "on_load_checkpoint", "on_train_end", "on_fit_end", "teardown")
LAST = ("on_train_end", "on_fit_end", "teardown")
STEP_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")


def kill_plan() -> list[tuple[str, int]]:
    """(hook, occurrence in its segment) for every fit hook; occurrences varied so that kills land
    inside chunks, between step checkpoints, inside validation and at epoch boundaries."""
    # The first segment is killed once a checkpoint exists (the next one resumes from it).
    hooks = [h for h in fit_hooks() if h not in ONCE] + [h for h in ONCE if h in fit_hooks()]
    plan = []
    for index, hook in enumerate(hooks):
        if hook in ONCE:
            occurrence = 1
        elif hook in STEP_HOOKS:
            occurrence = 4 + 3 * (index % 3)  # steps 4, 7, 10 of the segment: inside and at chunk ends
        else:
            occurrence = 2 + index % 2
        plan.append((hook, occurrence))
    return plan


def _segment(cfg: DictConfig, kill: tuple[str, int] | None) -> tuple[int, int]:
    """Train ``cfg`` in a forked child (killed at ``kill``); returns the child's pid and wait status."""
    pid = os.fork()
    if pid == 0:  # the child: train, and leave without running anything of pytest's
        code = 1
        try:
            from experiments.record import run_job
            from experiments.train import train

            if kill is not None:
                with open_dict(cfg):
                    cfg.callbacks.kill = {
                        "_target_": "reliability_helpers.KillAtHook",
                        "hook": kill[0],
                        "occurrence": kill[1],
                    }
            run_job(cfg, lambda record: train(cfg, record), cli=False)
            code = 0
        except BaseException:  # noqa: BLE001 - reported, and the parent sees the exit code
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return pid, status


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("model", MODELS)
def test_killed_at_every_hook_and_resumed_ends_bit_identical(
    compose_train: Callable[..., DictConfig], tmp_path: Path, model: str
) -> None:
    torch.set_num_threads(1)
    reference_cfg = compose_train(*MODELS[model], *COMMON)
    reference = tmp_path / "reference"
    with open_dict(reference_cfg):
        reference_cfg.paths.output_dir = str(reference)
    assert _segment(reference_cfg, None)[1] == 0

    run_dir = tmp_path / "run"
    steps, pids = [], []
    for number, kill in enumerate([*kill_plan(), None]):
        cfg = compose_train(*MODELS[model], *COMMON, *([f"resume={run_dir}"] if number else []))
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        pid, status = _segment(cfg, kill)
        pids.append(pid)
        if kill is None:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        else:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill, status)
            last = run_dir / "checkpoints" / "last.ckpt"
            steps.append((kill[0], torch.load(last, weights_only=True)["global_step"] if last.is_file() else None))
            if number:  # this segment found that the one before it was killed, and recorded it
                found = json.loads((run_dir / "metrics.json").read_text())
                assert (found["status"], found["signal"], found["pid"]) == ("killed", "SIGKILL", pids[-2])

    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == expected["global_step"], steps
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, got["state_dict"][name]), (name, steps)
    for a, b in zip(expected["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a), steps
    assert _history(run_dir) == _history(reference), steps
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (reference, run_dir)]
    assert metrics[1]["status"] == "completed"
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["best"] == metrics[1]["best"]
