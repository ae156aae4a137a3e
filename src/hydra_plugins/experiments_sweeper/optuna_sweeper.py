"""A Hydra sweeper on Optuna: random or TPE search that resumes, survives and spans machines.

Why our own: hydra-optuna-sweeper (1.3.0, the latest) pins optuna < 3 and its SQLite storage fails
with SQLAlchemy 2. Keeping Hydra's sweeper interface means users sweep the way they already do
(``python -m experiments.train -m experiment=xor hparams_search=xor_tpe``), every trial is an ordinary Hydra job
(run directory, overrides.yaml, callbacks, any launcher), and ``summary.csv`` comes from the same
``on_multirun_end`` hook as a grid search.

- The study lives in storage (a SQLite file in the sweep directory, or any SQLAlchemy URL such as
  ``postgresql://...`` shared by workers on many machines), so the same command resumes it.
- Each trial runs in ``study.optimize`` with Optuna's heartbeats (``heartbeat_interval``,
  ``grace_period``): a trial whose worker died, on any machine, stops beating, and the next worker
  that asks Optuna for a trial fails it and queues its parameters again
  (``RetryHeartbeatStaleTrialCallback``, ``max_retry`` times). Its half-written run directory
  is removed wherever a sweep of the study finds it.
- ``n_trials`` is counted in the storage, not in a local file: a worker asks for a trial only while
  the study's finished, running and queued trials are fewer than ``n_trials``, and a trial whose
  number shows that others took the last places first (two workers asking at the same moment) is
  not run (FAIL, ``fail_reason`` "surplus"). Trials replaced by a retry and surplus ones do not count.
- Trial N runs as Hydra job N (its directory is ``<sweep dir>/N``); a trial that raises, diverges
  to NaN or is pruned is told to Optuna as FAIL (with ``fail_reason``) or PRUNED and the search goes on.
- ``n_jobs`` worker processes (forked, each running one trial at a time) share the study through
  its storage, which is how Optuna itself parallelises.
- When the sweep ends, Optuna's matplotlib figures of the study go into the sweep directory
  (``experiments.summarize.plot_study``), and ``summary.md`` links them.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
import traceback
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError, interrupted
from experiments.redact import redact, redacted
from experiments.runs import read_metrics
from experiments.summarize import plot_study
from experiments.sweeps import open_storage, storage_url

log = logging.getLogger(__name__)

# How a worker stopped by Ctrl-C exits (the shell's code for SIGINT).
INTERRUPTED_EXIT = 130
SURPLUS = "surplus: other workers took the study's last trials first; not run"


class TrialFailed(Exception):
    """A trial that raised, diverged or gave no finite objective: Optuna records it as FAIL."""


class OptunaSweeper(Sweeper):
    """Random or Bayesian (TPE) search over ``params`` with Optuna; see the module docstring."""

    # Set by setup(), which Hydra calls before sweep().
    hydra_context: HydraContext
    config: DictConfig
    launcher: Launcher

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
        heartbeat_interval: int = 10,
        grace_period: int = 30,
        max_retry: int | None = 2,
    ) -> None:
        self.study_name = study_name
        self.storage = storage
        self.direction = {"min": "minimize", "max": "maximize"}.get(direction, direction)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.params = dict(params or {})
        self.heartbeat_interval = int(heartbeat_interval)
        self.grace_period = int(grace_period)
        self.max_retry = max_retry

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
                fixed.append(str(override.input_line))  # the parser keeps the text of every override
            elif override.is_interval_sweep():
                sweep = override.value()
                # interval(a,b) always has both ends.
                assert isinstance(sweep, IntervalSweep) and sweep.start is not None and sweep.end is not None
                log_scale = "log" in sweep.tags
                if "int" in sweep.tags:
                    space[key] = dist.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
                else:
                    space[key] = dist.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
            else:  # choice(...), a,b,c and range(...): categorical over the values as Hydra spells them
                space[key] = dist.CategoricalDistribution(list(override.sweep_string_iterator()))
        if not space:
            raise UserError(
                "the optuna sweeper has nothing to search: give hydra.sweeper.params "
                "(e.g. hparams_search=xor_tpe) or a sweep override such as optimizer.lr='tag(log,interval(1e-4,1e-1))'"
            )
        return space, fixed

    # -- the study ------------------------------------------------------------------------------

    def _storage(self, url: str) -> Any:
        """The study's storage, with Optuna's heartbeats and its retry of stale trials."""
        heartbeat = {
            "heartbeat_interval": self.heartbeat_interval,
            "grace_period": self.grace_period,
            _stale_callback_argument(): _retry_callback(self.max_retry),
        }
        try:
            return open_storage(url, **heartbeat)
        except ImportError as err:  # no driver for this database
            raise UserError(
                f"hydra.sweeper.storage={_hide_password(url)}: {err}; install its driver "
                "(PostgreSQL: pip install 'psycopg[binary]')"
            ) from err
        except Exception as err:
            import sqlalchemy.exc

            if not isinstance(err, (sqlalchemy.exc.SQLAlchemyError, ValueError)):  # ValueError: a bad port
                raise
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise UserError(
                f"hydra.sweeper.storage={_hide_password(url)}: cannot open the study's database: {reason}"
            ) from err

    def _open_study(self, storage: Any) -> Any:
        import optuna

        return optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=_instance(self.sampler_cfg),
            pruner=_instance(self.pruner_cfg),
            direction=self.direction,  # type: ignore[arg-type]  # Optuna refuses any other value in one line
            load_if_exists=True,
        )

    def sweep(self, arguments: list[str]) -> Any:
        _quiet_optuna_warnings()
        space, fixed = self._search_space(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        url = storage_url(self.storage, sweep_dir)
        if self.storage:  # a bad URL is refused before any folder is made
            storage = self._storage(url)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # As Hydra's BasicSweeper saves it, with the password of any URL (the storage's) masked.
        OmegaConf.save(redacted(OmegaConf.to_container(self.config)), sweep_dir / "multirun.yaml")
        if not self.storage:
            storage = self._storage(url)
        study = self._open_study(storage)
        _drop_replaced_runs(study, sweep_dir)
        log.info(
            f"Optuna study {self.study_name!r} in {_hide_password(url)}: {_tally(study)[1]}/{self.n_trials} trials done"
        )
        if self.n_jobs <= 1:
            self._work(study, space, fixed, sweep_dir)
        else:
            storage.remove_session()  # the workers open their own connections after the fork
            storage.engine.dispose()
            self._fork_workers(url, space, fixed, sweep_dir)
            study = self._open_study(self._storage(url))
        _drop_replaced_runs(study, sweep_dir)
        if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
            log.info(f"Best trial {study.best_trial.number}: {study.best_value} with {study.best_trial.params}")
        plot_study(study, sweep_dir)
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

        # Ctrl-C ends a worker at once, quietly: its trial is an interrupted one, which the next run
        # of the same command settles (failed, parameters queued again), like a worker that was killed.
        signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED_EXIT))
        # Each worker trains on its share of the cores instead of all workers fighting over all.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.n_jobs))
        try:
            study = self._open_study(self._storage(url))
            # Forked workers would otherwise draw the same "random" parameters from one seed.
            study.sampler.reseed_rng()
            self._work(study, space, fixed, sweep_dir)
        except BaseException as err:
            if interrupted(err):  # Ctrl-C: the sweep process says so, in one line
                os._exit(INTERRUPTED_EXIT)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    def _work(self, study: Any, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        """Run trials, one ``study.optimize`` call each (Optuna's heartbeats and its retry of stale
        trials come with it), until the study holds ``n_trials`` finished ones."""
        waiting_logged = False
        while True:
            _fail_stale_trials(study)
            counted, done = _tally(study)
            if done >= self.n_trials:
                return
            queued = any(t.state.name == "WAITING" for t in counted)
            if len(counted) >= self.n_trials and not queued:
                # The last trials run in other workers: wait until they end, or stop beating and
                # come back as queued retries that this worker then runs.
                if not waiting_logged:
                    running = [t.number for t in counted if t.state.name == "RUNNING"]
                    log.info(f"waiting for trials {running} of other workers (stale after {self.grace_period} s)")
                    waiting_logged = True
                _fail_unstarted_trials(study, self.heartbeat_interval + self.grace_period)
                time.sleep(1.0)
                continue
            waiting_logged = False
            current: list[int] = []
            try:
                study.optimize(
                    lambda trial: self._objective(study, trial, space, fixed, sweep_dir, current),  # noqa: B023 - runs now (n_trials=1)
                    n_trials=1,
                    catch=(TrialFailed,),
                    gc_after_trial=False,
                )
            except ValueError as err:
                # Another worker found this trial's heartbeat late (a busy machine) and failed it;
                # Optuna queued its parameters again, so this worker's result is not told.
                frozen = _frozen(study, current[0]) if current else None
                if frozen is None or frozen.state.name != "FAIL" or "Cannot tell" not in str(err):
                    raise
                log.warning(
                    f"trial {frozen.number} was declared stale while it ran (heartbeat later than "
                    f"{self.grace_period} s); its parameters run again as a new trial"
                )
            except KeyboardInterrupt:
                # Optuna has failed the trial; queue its parameters again, as for a dead worker.
                if current:
                    frozen = _frozen(study, current[0])
                    if frozen is not None and frozen.state.name == "FAIL":
                        _retry_callback(self.max_retry)(study, frozen)
                        _drop_replaced_runs(study, sweep_dir)
                raise

    def _objective(
        self, study: Any, trial: Any, space: dict[str, Any], fixed: list[str], sweep_dir: Path, current: list[int]
    ) -> float:
        """Run trial ``trial.number`` as Hydra job ``trial.number``; its objective, or PRUNED or FAIL."""
        import optuna

        current.append(trial.number)
        place = _place(study, trial.number)
        if place >= self.n_trials:
            trial.set_user_attr("fail_reason", SURPLUS)
            study.stop()
            raise TrialFailed(SURPLUS)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {key: _suggest(trial, key, distribution) for key, distribution in space.items()}
        overrides = fixed + [f"{key}={value}" for key, value in params.items()]
        log.info(f"trial {trial.number}: {' '.join(overrides)}")
        (result,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
        run_dir = Path(str(result.hydra_cfg.hydra.runtime.output_dir)) if result.hydra_cfg else None
        metrics = read_metrics(run_dir) if run_dir else {}
        if result.status == JobStatus.FAILED and not metrics.get("error"):
            err = result._return_value  # private: hydra 1.3 -- the exception (return_value re-raises it)
            metrics = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        status, value = metrics.get("status"), metrics.get("best")
        if status == "pruned":
            trial.set_user_attr("pruned", metrics.get("error", ""))
            raise optuna.TrialPruned(metrics.get("error", ""))
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        reason = metrics.get("error") or (
            f"objective {value!r} is not a finite number" if status == "completed" else "no metrics.json"
        )
        trial.set_user_attr("fail_reason", reason)
        log.warning(f"trial {trial.number} failed: {reason}")
        raise TrialFailed(reason)


def _instance(node: Any) -> Any:
    """Hydra instantiates the sampler and pruner nodes with the sweeper; a plain node is built here."""
    return instantiate(node) if isinstance(node, (dict, DictConfig)) else node


def _quiet_optuna_warnings() -> None:
    """Heartbeats, their retry callback and fail_stale_trials are 'experimental' in Optuna 4 and 5."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def _retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that queues a stale trial's parameters again (renamed in Optuna 4.9)."""
    import optuna

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    return retry(max_retry=max_retry)


def _stale_callback_argument() -> str:
    """RDBStorage's keyword for that callback: failed_trial_callback before Optuna 4.9."""
    import inspect

    import optuna

    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    return (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )


def _fail_stale_trials(study: Any) -> None:
    import optuna

    optuna.storages.fail_stale_trials(study)


def _replaced(trials: list[Any]) -> set[int]:
    """Numbers of the trials that a retry replaced (stale or interrupted ones)."""
    retry = _retry_callback(None)
    return {number for t in trials for number in retry.retry_history(t)}


def _tally(study: Any) -> tuple[list[Any], int]:
    """The trials that count towards n_trials (all but replaced and surplus ones), and how many of
    them are finished (complete, pruned or failed)."""
    trials = study.get_trials(deepcopy=False)
    replaced = _replaced(trials)
    counted = [t for t in trials if t.number not in replaced and t.user_attrs.get("fail_reason") != SURPLUS]
    done = sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in counted)
    return counted, done


def _place(study: Any, number: int) -> int:
    """How many counted trials come before trial ``number``. The storage numbers trials one at a
    time (it locks the study row), so every trial numbered before it is already there."""
    counted, _ = _tally(study)
    return sum(1 for t in counted if t.number < number)


def _frozen(study: Any, number: int) -> Any:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def _fail_unstarted_trials(study: Any, seconds: float) -> None:
    """A worker killed between asking for a trial and its first heartbeat leaves a running trial
    that never becomes stale: failed, and retried, once it is ``seconds`` old without a worker name."""
    for frozen in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        started = frozen.datetime_start or datetime.now()
        if "worker" in frozen.user_attrs or (datetime.now() - started).total_seconds() < seconds:
            continue
        try:
            study.tell(frozen.number, state=_state("FAIL"))
        except Exception:  # another worker settled it first
            continue
        _retry_callback(None)(study, _frozen(study, frozen.number))


def _drop_replaced_runs(study: Any, sweep_dir: Path) -> None:
    """Remove the run directories of trials that a retry replaced: half a run, nothing in it is a result."""
    for number in sorted(_replaced(study.get_trials(deepcopy=False))):
        run_dir = sweep_dir / str(number)
        if run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            log.warning(f"trial {number} stopped with its worker; its parameters ran again as a new trial")


def _suggest(trial: Any, name: str, distribution: Any) -> Any:
    import optuna.distributions as dist

    if isinstance(distribution, dist.FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, dist.IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
    return trial.suggest_categorical(name, distribution.choices)


def _hide_password(url: str) -> str:
    """The storage URL as shown in messages and logs: without its password, wherever it sits."""
    return redact(url)


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]
