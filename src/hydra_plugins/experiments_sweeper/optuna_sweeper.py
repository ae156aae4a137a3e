"""A Hydra sweeper on Optuna's public ask-and-tell API: random or TPE search that resumes and survives.

Why our own: hydra-optuna-sweeper (1.3.0, the latest) pins optuna < 3 and its SQLite storage fails
with SQLAlchemy 2. Keeping Hydra's sweeper interface means users sweep the way they already do
(``python -m experiments.train -m experiment=xor hparams_search=xor_tpe``), every trial is an ordinary Hydra job
(run directory, overrides.yaml, callbacks, any launcher), and ``summary.csv`` comes from the same
``on_multirun_end`` hook as a grid search.

- The study lives in storage (a SQLite file in the sweep directory, or any SQLAlchemy URL), so the
  same command resumes it: finished trials stay finished; trials whose worker died are marked
  failed ("interrupted"), their half-written run directory is removed, and their parameters are
  queued again.
- Trial N runs as Hydra job N (its directory is ``<sweep dir>/N``); a trial that raises, diverges
  to NaN or is pruned is told to Optuna as FAIL (with ``fail_reason``) or PRUNED and the search goes on.
- ``n_jobs`` worker processes (forked, each asking Optuna for trials and running them one at a
  time) share the study through its storage, which is how Optuna itself parallelises.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: its sweep process died before the trial ended"
# How a worker stopped by Ctrl-C exits (the shell's code for SIGINT).
INTERRUPTED_EXIT = 130
# A running trial that never got its worker's name is an orphan after this long.
ORPHAN_SECONDS = 60


class OptunaSweeper(Sweeper):
    """Random or Bayesian (TPE) search over ``params`` with Optuna; see the module docstring."""

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: Any,
        pruner: Any,
        params: dict[str, str] | None = None,
    ) -> None:
        self.study_name = study_name
        self.storage = storage
        self.direction = {"min": "minimize", "max": "maximize"}.get(direction, direction)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- search space ---------------------------------------------------------------------------

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Optuna distributions of the sweep overrides, and the fixed overrides every trial gets."""
        import optuna.distributions as dist

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        space: dict[str, Any] = {}
        fixed: list[str] = []
        for override in parser.parse_overrides(lines):
            key = override.get_key_element()
            if not override.is_sweep_override():
                fixed.append(override.input_line)
            elif override.is_interval_sweep():
                sweep = override.value()
                log_scale = "log" in sweep.tags
                if "int" in sweep.tags:
                    space[key] = dist.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
                else:
                    space[key] = dist.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
            else:  # choice(...), a,b,c and range(...): categorical over the values as Hydra spells them
                space[key] = dist.CategoricalDistribution(list(override.sweep_string_iterator()))
        if not space:
            from experiments.errors import UserError

            raise UserError(
                "the optuna sweeper has nothing to search: give hydra.sweeper.params "
                "(e.g. hparams_search=xor_tpe) or a sweep override such as optimizer.lr='tag(log,interval(1e-4,1e-1))'"
            )
        return space, fixed

    # -- the study ------------------------------------------------------------------------------

    def _open_study(self, storage: Any) -> Any:
        import optuna

        return optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=_instance(self.sampler_cfg),
            pruner=_instance(self.pruner_cfg),
            direction=self.direction,
            load_if_exists=True,
        )

    def sweep(self, arguments: list[str]) -> Any:
        from experiments.sweeps import open_storage, storage_url

        space, fixed = self._search_space(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = storage_url(self.storage, sweep_dir)
        storage = open_storage(url)
        study = self._open_study(storage)
        _recover_interrupted(study, sweep_dir)
        log.info(f"Optuna study {self.study_name!r} in {url}: {_finished(study)}/{self.n_trials} trials done")
        if self.n_jobs <= 1:
            self._work(study, space, fixed, sweep_dir)
        else:
            storage.remove_session()  # the workers open their own connections after the fork
            storage.engine.dispose()
            self._fork_workers(url, space, fixed, sweep_dir)
            study = self._open_study(open_storage(url))
        best = [t for t in study.trials if t.state.name == "COMPLETE"]
        if best:
            log.info(f"Best trial {study.best_trial.number}: {study.best_value} with {study.best_trial.params}")
        return study

    def _fork_workers(self, url: str, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        # Forked (not spawned) so that each worker keeps the composed Hydra state and task function;
        # they share nothing but the study's storage.
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        workers = [
            context.Process(target=self._worker_main, args=(url, space, fixed, sweep_dir), name=f"optuna-worker-{i}")
            for i in range(self.n_jobs)
        ]
        for worker in workers:
            worker.start()
        # Ctrl-C reaches the whole process group: each worker exits at once with code 130 (see
        # _worker_main), and their trials are settled when the same command resumes the study. This
        # process only notes it, and says so once they are gone; a KeyboardInterrupt raised here at
        # a random point could be swallowed by a finaliser, with a traceback and the sweep going on.
        interrupted: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
        try:
            for worker in workers:
                worker.join()
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted or any(w.exitcode == INTERRUPTED_EXIT for w in workers):
            raise KeyboardInterrupt
        failed = [w.name for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"sweep workers {failed} stopped with an error (see their traceback above)")

    def _worker_main(self, url: str, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        import torch

        from experiments.sweeps import open_storage

        # Ctrl-C ends a worker at once, quietly: its trial is an interrupted one, which the next run
        # of the same command settles (failed, parameters queued again), like a worker that was killed.
        signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED_EXIT))
        # Each worker trains on its share of the cores instead of all workers fighting over all.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.n_jobs))
        try:
            study = self._open_study(open_storage(url))
            # Forked workers would otherwise draw the same "random" parameters from one seed.
            study.sampler.reseed_rng()
            self._work(study, space, fixed, sweep_dir)
        except BaseException as err:
            from experiments.errors import interrupted

            if interrupted(err):  # Ctrl-C: the sweep process says so, in one line
                os._exit(INTERRUPTED_EXIT)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    def _work(self, study: Any, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        """Ask for a trial, run it as Hydra job number trial.number, tell the result; until n_trials."""
        while True:
            # A lock, so that two workers never both take the last trial.
            with open(sweep_dir / ".optuna.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                running = len(study.get_trials(deepcopy=False, states=(_state("RUNNING"),)))
                if _finished(study) + running >= self.n_trials:
                    return
                trial = study.ask(fixed_distributions=space)
                trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            overrides = fixed + [f"{key}={value}" for key, value in trial.params.items()]
            log.info(f"trial {trial.number}: {' '.join(overrides)}")
            (result,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
            self._tell(study, trial, result)

    def _tell(self, study: Any, trial: Any, result: Any) -> None:
        run_dir = Path(str(result.hydra_cfg.hydra.runtime.output_dir)) if result.hydra_cfg else None
        metrics = _read_metrics(run_dir / "metrics.json") if run_dir else {}
        if result.status == JobStatus.FAILED and not metrics.get("error"):
            err = result._return_value
            metrics = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        _tell_from_metrics(study, trial.number, metrics)


def _instance(node: Any) -> Any:
    """Hydra instantiates the sampler and pruner nodes with the sweeper; a plain node is built here."""
    return instantiate(node) if isinstance(node, (dict, DictConfig)) else node


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _finished(study: Any) -> int:
    """Trials that count towards n_trials: complete, pruned and failed, but not interrupted ones."""
    states = (_state("COMPLETE"), _state("PRUNED"), _state("FAIL"))
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get("fail_reason") != INTERRUPTED
    )


def _tell_from_metrics(study: Any, number: int, metrics: dict[str, Any]) -> None:
    """Tell Optuna what a trial's ``metrics.json`` says: its objective, pruned, or failed and why."""
    from experiments.engine import optuna_trial

    trial = optuna_trial(study, number)
    status, value = metrics.get("status"), metrics.get("best")
    if status == "pruned":
        trial.set_user_attr("pruned", metrics.get("error", ""))
        study.tell(number, state=_state("PRUNED"))
        return
    if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
        study.tell(number, float(value))
        return
    reason = metrics.get("error") or (
        f"objective {value!r} is not a finite number" if status == "completed" else "no metrics.json"
    )
    trial.set_user_attr("fail_reason", reason)
    study.tell(number, state=_state("FAIL"))
    log.warning(f"trial {number} failed: {reason}")


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_interrupted(study: Any, sweep_dir: Path) -> None:
    """Settle the running trials of dead workers on this machine: from their results if they were
    written, else as failed ("interrupted") with their parameters queued again."""
    import optuna

    from experiments.engine import optuna_trial

    host = socket.gethostname()
    for frozen in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        worker_host, _, pid = str(frozen.user_attrs.get("worker", "")).rpartition(":")
        if not pid:  # killed between asking for the trial and naming its worker, a minute ago or more
            started = frozen.datetime_start or datetime.now()
            if (datetime.now() - started).total_seconds() < ORPHAN_SECONDS:
                continue
        elif worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue  # another machine's worker, or a live one: not ours to judge
        run_dir = sweep_dir / str(frozen.number)
        metrics = _read_metrics(run_dir / "metrics.json")
        if metrics.get("status") in ("completed", "pruned", "failed"):
            _tell_from_metrics(study, frozen.number, metrics)  # it finished; only the telling was lost
            continue
        optuna_trial(study, frozen.number).set_user_attr("fail_reason", INTERRUPTED)
        study.tell(frozen.number, state=_state("FAIL"))
        if run_dir.is_dir():
            shutil.rmtree(run_dir)  # half a run: nothing in it is a result
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number}, skip_if_exists=False)
        log.warning(f"trial {frozen.number} was {INTERRUPTED}; its parameters are queued again")
