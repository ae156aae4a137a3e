"""Who starts in a run folder: one run per folder for its whole life.

A process that starts in a folder holding a run of the same experiment continues it from its
``checkpoints/last.ckpt`` (a SLURM requeue, a resubmitted job, the same ``hydra.run.dir`` again, a
sweep run again in its folder) and counts the restart; a completed one has nothing left to train
and keeps its results; another experiment's run, or a folder that is not a run, is refused before
anything is written. Decided from the folder and the command's overrides alone
(:func:`plan_start`), so that every process of a distributed run decides the same.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import ListConfig, OmegaConf

from experiments.errors import UserError
from experiments.runs import HOLDER, LOCK, read_metrics, read_yaml_text

# Files a run folder holds before its run has written anything of its own.
BOOKKEEPING = {".hydra", "train.log", LOCK, HOLDER}

# Overrides ---------------------------------------------------------------------

# Overrides that say how a command continues a run, not what the run trains: left out when a
# command is compared with the run in its folder, and from the overrides a run records.
CONTINUING = ("resume", "resume_with_changes")
LAST = Path("checkpoints") / "last.ckpt"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def experiment_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """The overrides that define a run's experiment, by key (the last one of a key wins, as in
    Hydra): all but ``resume=``, ``resume_with_changes=`` and ``hydra.*``.

    A run is known by its overrides rather than its resolved config: two starts of one command
    resolve to different configs (the time and process id in its folder name, the paths of the
    machine it runs on), while its overrides are what the user chose, and what a requeued or
    resubmitted job passes again."""
    found: dict[str, str] = {}
    for override in overrides:
        key = override_key(override)
        if key not in CONTINUING and not key.startswith("hydra."):
            found[key] = override
    return found


def _meaning(overrides: dict[str, str]) -> dict[str, Any]:
    """Each override as Hydra reads it, so that spellings of one value compare equal (a sweep
    records ``verbose=False`` for the command's ``verbose=false``)."""
    parser = OverridesParser.create()
    meant: dict[str, Any] = {}
    for key, override in overrides.items():
        try:
            (parsed,) = parser.parse_overrides([override])
            meant[key] = (parsed.type, parsed.package, parsed.value())
        except Exception:  # noqa: BLE001 - an override Hydra cannot read back is compared as written
            meant[key] = override
    return meant


def train_command(overrides: Iterable[str], resume: Path | None = None) -> str:
    """``python -m experiments.train <overrides> [resume=<dir>]``, quoted for a shell."""
    kept = [shlex.quote(o) for o in experiment_overrides(overrides).values()]
    tail = [f"resume={shlex.quote(str(resume))}"] if resume is not None else []
    return " ".join(["python -m experiments.train", *kept, *tail])


@dataclass
class Start:
    """How a process starts in its run folder (:func:`plan_start`).

    ``kind``: ``fresh`` (a new run), ``again`` (a run whose earlier start kept no checkpoint,
    started over), ``continue`` (from its ``checkpoints/last.ckpt``), ``done`` (completed: nothing
    left to train). ``changed``: continued with other overrides than its own
    (``resume_with_changes=true``). ``restarts``: how often the run has been continued."""

    kind: str
    restarts: int = 0
    changed: bool = False
    note: str | None = None


def plan_start(run_dir: Path, overrides: list[str], resume: bool, with_changes: bool, multirun: bool) -> Start:
    """How a command with ``overrides`` starts in ``run_dir``, or a :class:`UserError` saying why it
    may not (one run per folder for its whole life). Decided from the folder alone, so that every
    process of a distributed run, and every start of a requeued job, decides the same."""
    if multirun and resume:
        raise UserError(
            "resume= continues one run, not the trials of a sweep: run the sweep again in its folder "
            "(hydra.sweep.dir=<sweep dir>) and each trial continues from its own checkpoints/last.ckpt, "
            "or continue one trial with resume=<its folder> (without -m)"
        )
    recorded = recorded_overrides(run_dir)
    metrics = read_metrics(run_dir)
    status = metrics.get("status")
    restarts = metrics.get("restarts")
    restarts = restarts if isinstance(restarts, int) and restarts >= 0 else 0
    elsewhere = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if recorded is None:
        if resume:  # a run folder without its overrides: its checkpoint alone is checked
            return Start("continue", restarts + 1)
        foreign = _not_bookkeeping(run_dir)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UserError(
                f"{run_dir} holds files that are not a run of this project ({shown}); nothing was written "
                f"there: run in a new folder ({elsewhere}=<new folder>), or empty that one"
            )
        return Start("fresh")
    mine, theirs = experiment_overrides(overrides), experiment_overrides(recorded)
    changed = _meaning(mine) != _meaning(theirs)
    command = train_command(recorded, run_dir)
    if changed and resume and not with_changes:
        raise UserError(
            f"resume={run_dir}: this command's overrides differ from those the run was started with "
            f"({_differences(theirs, mine)}); continue it unchanged with: {command}; or add "
            "resume_with_changes=true to continue it with this command's overrides (its .hydra/overrides.yaml "
            "and config.yaml then record them)"
        )
    if changed and not resume:
        if not _not_bookkeeping(run_dir):
            return Start("fresh")  # an earlier start that wrote nothing but its overrides
        raise UserError(
            f"{run_dir} holds another run ({_differences(theirs, mine)}); nothing was written there: run in a "
            f"new folder ({elsewhere}=<new folder>), or continue that run with: {command}"
        )
    last = run_dir / LAST
    if status == "completed" and not changed:
        return Start(
            "done",
            restarts,
            note=f"{run_dir} holds this run, completed: nothing left to train, its results stay as they are "
            f"(to train it further: {command} resume_with_changes=true trainer.max_epochs=<more>)",
        )
    if last.is_file() or resume:  # resume= without a last.ckpt is refused by checkpoint_to_resume
        how = metrics.get("error") or status or "stopped without a record of how"
        return Start(
            "continue",
            restarts + 1,
            changed,
            note=f"{run_dir} holds this run ({how}); continuing it from its {LAST} (restart {restarts + 1})",
        )
    return Start(
        "again",
        note=f"{run_dir} holds an earlier start of this run that kept no checkpoint "
        f"({status or 'no record of how it ended'}); starting it again from the beginning",
    )


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run folder recorded (``.hydra/overrides.yaml``), or None without them."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        recorded = OmegaConf.create(read_yaml_text(path))
    except Exception as err:  # noqa: BLE001 - YAML and OmegaConf errors alike: the file is damaged
        raise UserError(
            f"cannot read {path} ({' '.join(str(err).split())[:120]}); it does not say which run {run_dir} "
            "holds: run in a new folder (hydra.run.dir=<new folder>)"
        ) from None
    if not isinstance(recorded, ListConfig):
        raise UserError(f"{path} is not a list of overrides; run in a new folder (hydra.run.dir=<new folder>)")
    return [str(o) for o in recorded]


def _not_bookkeeping(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds beyond the files of a run that has written nothing yet."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name not in BOOKKEEPING)


def drop_empty_log(run_dir: Path) -> None:
    """Hydra opens the log file (``train.log``) in the run folder before any of our code runs; in a
    folder that is no run, and that this command leaves alone, an empty one is its doing."""
    log = run_dir / "train.log"
    if log.is_file() and log.stat().st_size == 0:
        log.unlink(missing_ok=True)


def _differences(run: dict[str, str], command: dict[str, str]) -> str:
    """What sets two experiments apart, shortly: ``the run has x=1, this command x=2; ...``."""
    parts = []
    meant_run, meant_command = _meaning(run), _meaning(command)
    for key in sorted(set(run) | set(command)):
        if meant_run.get(key) != meant_command.get(key):
            parts.append(f"{run.get(key) or f'no {key}'} in the run, {command.get(key) or f'no {key}'} here")
        if len(parts) == 3:
            parts.append("...")
            break
    return "; ".join(parts)
