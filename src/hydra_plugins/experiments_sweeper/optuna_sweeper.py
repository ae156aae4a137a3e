"""A Hydra sweeper on Optuna: random or TPE search that resumes, survives and spans machines.

Why our own: hydra-optuna-sweeper (1.3.0, the latest) pins optuna < 3 and its SQLite storage fails
with SQLAlchemy 2. Keeping Hydra's sweeper interface means users sweep the way they already do
(``python -m experiments.train -m experiment=xor hparams_search=xor_tpe``), every trial is an ordinary Hydra job
(run directory, overrides.yaml, callbacks, any launcher), and ``summary.csv`` comes from the same
``on_multirun_end`` hook as a grid search.

- The study lives in storage (a SQLite file in the sweep directory, or any SQLAlchemy URL such as
  ``postgresql://...`` shared by workers on many machines), so the same command resumes it.
- Each trial runs as ``study.optimize`` runs one, with Optuna's heartbeats (``heartbeat_interval``,
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
  its storage, which is how Optuna itself parallelises. They are supervised as the parallel
  launcher's jobs are (``hydra_plugins/experiments_launcher/workers.py``): they die with the
  sweep's process, Ctrl-C and SIGTERM reach each of them once, and how each ended is read from its
  exit status. A worker killed or stopped alone costs only its trial, which Optuna fails and runs
  again (at once for a stopped one, after ``grace_period`` for a killed one); a trial whose
  heartbeats came late (a stopped process) is failed by another worker and its late result dropped.
- However the sweep ends, its summary is written (``experiments.summarize.finish_sweep``): exit
  code 0 when every trial completed or was pruned, 3 and one line when one did not or the study's
  database went away (each database error is one line, and the same command continues the study
  once the database is back), 130 or 143 when Ctrl-C or SIGTERM stopped it.
- When the sweep ends, Optuna's matplotlib figures of the study go into the sweep directory
  (``experiments.summarize.plot_study``), and ``summary.md`` links them.
- One sweep at a time writes into a sweep folder (``sweep_folder.SweepLock``): a second one is
  refused in one line before anything is written.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import traceback
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

from experiments.errors import UserError, interrupted, one_line
from experiments.redact import redacted
from experiments.runs import read_metrics
from experiments.signals import (
    SIGINT_EXIT,
    SIGTERM_EXIT,
    Terminated,
    is_sigterm,
    signals_held,
    sigterm_raises,
)
from experiments.summarize import finish_sweep, plot_study
from experiments.sweeps import open_storage, quiet_heartbeat_failures, storage_error, storage_problem, storage_url
from hydra_plugins.experiments_launcher.sweep_folder import SweepLock
from hydra_plugins.experiments_launcher.workers import PassedOn, ending, record_lost, start_worker
from hydra_plugins.experiments_sweeper.study import (
    SURPLUS,
    drop_replaced_runs,
    fail_stale_trials,
    fail_unstarted_trials,
    frozen,
    heartbeat,
    hide_password,
    place,
    quiet_optuna_warnings,
    retry_callback,
    stale_callback_argument,
    state,
    tally,
)

log = logging.getLogger(__name__)

# How a worker exits when the study's database failed (it sends the reason first): BSD's EX_TEMPFAIL.
DATABASE_FAILED = 75


class TrialFailed(Exception):
    """A trial that raised, diverged or gave no finite objective: Optuna records it as FAIL."""


class SweepProblem(Exception):
    """Why a sweep could not run to its end (its study's database failed, a worker crashed): the
    sweep is summarised and the command ends with this line and exit code 3."""


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
        for name, value, least in (
            ("n_trials", n_trials, 1),
            ("n_jobs", n_jobs, 1),
            ("heartbeat_interval", heartbeat_interval, 1),
            ("grace_period", grace_period, 1),
            ("max_retry", 0 if max_retry is None else max_retry, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"hydra.sweeper.{name}={value!r} must be an integer >= {least}")
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
                try:
                    if "int" in sweep.tags:
                        space[key] = dist.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
                    else:
                        space[key] = dist.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
                except ValueError as err:  # Optuna's own check: low > high, a log scale from 0 or below
                    raise UserError(
                        f"{override.input_line}: {one_line(str(err)).rstrip('.')}; an interval(low,high) has low <= high "
                        "(and low > 0 on a log scale)"
                    ) from None
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
            stale_callback_argument(): retry_callback(self.max_retry),
        }
        try:
            return open_storage(url, **heartbeat)
        except ImportError as err:  # no driver for this database
            raise UserError(
                f"hydra.sweeper.storage={hide_password(url)}: {err}; install its driver "
                "(PostgreSQL: pip install 'psycopg[binary]')"
            ) from err
        except ValueError as err:  # SQLAlchemy's URL parser: a port that is no number, ...
            raise UserError(
                f"hydra.sweeper.storage={hide_password(url)}: not a database URL ({one_line(str(err))[:120]}); "
                "e.g. postgresql+psycopg://user@host:5432/database with the password in PGPASSWORD or ~/.pgpass"
            ) from err
        except Exception as err:
            if storage_error(err) is None:
                raise
            raise UserError(
                f"hydra.sweeper.storage={hide_password(url)}: cannot open the study's database: {storage_problem(err)}"
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
        quiet_optuna_warnings()
        space, fixed = self._search_space(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        url = storage_url(self.storage, sweep_dir)
        if self.storage:  # a bad URL is refused before any folder is made
            storage = self._storage(url)
        # One sweep at a time in a folder: a second one is refused before multirun.yaml is written.
        lock = SweepLock(sweep_dir).acquire()
        try:
            # As Hydra's BasicSweeper saves it, with the password of any URL (the storage's) masked.
            OmegaConf.save(redacted(OmegaConf.to_container(self.config)), sweep_dir / "multirun.yaml")
            if not self.storage:
                storage = self._storage(url)
            study = self._open_study(storage)
            drop_replaced_runs(study, sweep_dir)
            log.info(
                f"Optuna study {self.study_name!r} in {hide_password(url)}: {tally(study)[1]}/{self.n_trials} trials done"
            )
            if self.n_jobs <= 1:
                with quiet_heartbeat_failures():
                    self._work(study, space, fixed, sweep_dir)
            else:
                storage.remove_session()  # the workers open their own connections after the fork
                storage.engine.dispose()
                self._fork_workers(url, space, fixed, sweep_dir)
                study = self._open_study(self._storage(url))
            drop_replaced_runs(study, sweep_dir)
            if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
                log.info(f"Best trial {study.best_trial.number}: {study.best_value} with {study.best_trial.params}")
            plot_study(study, sweep_dir)
            return study  # Hydra's on_multirun_end then summarises the sweep and says how it ended
        except BaseException as err:
            self._ended(err, url, sweep_dir)
            raise
        finally:
            lock.release()

    def _ended(self, err: BaseException, url: str, sweep_dir: Path) -> None:
        """A sweep that did not run to its end: its summary for what completed, then the signal's
        line and code (run_cli says it) for Ctrl-C and SIGTERM, or one line and exit code 3 for a
        database that failed or a worker that crashed; a bug of ours keeps its traceback. Another
        Ctrl-C or SIGTERM waits until the summary is written (a second Ctrl-C left none)."""
        with signals_held():
            if interrupted(err) or is_sigterm(err):
                self._plot(url, sweep_dir)
                finish_sweep(sweep_dir, stopped=True)
            elif isinstance(err, SweepProblem):
                self._plot(url, sweep_dir)
                finish_sweep(sweep_dir, problem=str(err))
            elif storage_error(err) is not None:
                finish_sweep(sweep_dir, problem=_database_failed(err, url))

    def _plot(self, url: str, sweep_dir: Path) -> None:
        """Optuna's figures of what completed, for a sweep that did not run to its end (before its
        summary, which links them); a database that fails now is one line, as the summary goes on."""
        import optuna

        try:
            plot_study(optuna.load_study(study_name=self.study_name, storage=self._storage(url)), sweep_dir)
        except Exception as err:
            if storage_error(err) is None and not isinstance(err, UserError):
                raise
            print(f"summary: no Optuna figures: {_database_failed(err, url)}", file=sys.stderr, flush=True)

    def _fork_workers(self, url: str, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        """``n_jobs`` forked workers (each keeps the composed Hydra state and task function; they
        share nothing but the study's storage), supervised until each has ended."""
        sys.stdout.flush()
        sys.stderr.flush()
        context = multiprocessing.get_context("fork")
        workers: list[_Worker] = []
        with PassedOn(lambda: [w.process.pid or 0 for w in workers if not w.done]) as signals:
            for index in range(self.n_jobs):
                with signals.holding():
                    workers.append(_Worker.start(context, self, index, (url, space, fixed, sweep_dir)))
            while running := [w for w in workers if not w.done]:
                ready = multiprocessing.connection.wait(
                    [w.reader for w in running] + [w.process.sentinel for w in running]
                )
                for worker in running:
                    if worker.reader in ready or worker.process.sentinel in ready:
                        worker.read()
                    if worker.done and not signals.received:
                        worker.say_how_it_ended(sweep_dir, self.grace_period)
        if signals.stopped_by == signal.SIGTERM:
            raise Terminated
        if signals.stopped_by == signal.SIGINT:
            raise KeyboardInterrupt
        failed = [w.database for w in workers if w.database]
        if failed:
            raise SweepProblem(_database_failed(failed[0], url))
        crashed = [w.process.name for w in workers if w.process.exitcode == 1]
        if crashed:
            raise SweepProblem(f"sweep workers {crashed} stopped with an error (its traceback is above)")

    def _worker_main(
        self, parent: int, pipe: Any, url: str, space: dict[str, Any], fixed: list[str], sweep_dir: Path
    ) -> None:
        """A forked worker: trials until the study has ``n_trials``; its ending in its exit status
        (0, 130, 143, ``DATABASE_FAILED`` after sending the reason, 1 after a traceback)."""
        start_worker(parent)
        import torch

        # Each worker trains on its share of the cores instead of all workers fighting over all.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.n_jobs))
        code = 0
        try:
            with sigterm_raises(), quiet_heartbeat_failures():
                study = self._open_study(self._storage(url))
                # Forked workers would otherwise draw the same "random" parameters from one seed.
                study.sampler.reseed_rng()
                self._work(study, space, fixed, sweep_dir, lambda number: pipe.send(("trial", number)))
        except BaseException as err:  # every ending is told to the sweep's process
            if interrupted(err):
                code = SIGINT_EXIT
            elif is_sigterm(err):
                code = SIGTERM_EXIT
            elif storage_error(err) is not None:
                code = DATABASE_FAILED
                pipe.send(("database", storage_problem(err)))
            else:
                traceback.print_exc()
                code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not multiprocessing's exit, which would wait for threads a trial left running

    def _work(self, study: Any, space: dict[str, Any], fixed: list[str], sweep_dir: Path, started: Any = None) -> None:
        """Run trials, one at a time (:meth:`_trial`; stale trials failed and retried first, as
        ``study.optimize`` does), until the study holds ``n_trials`` finished ones. ``started(number)``
        is told each trial's number as it starts."""
        waiting_logged = False
        while True:
            fail_stale_trials(study)
            counted, done = tally(study)
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
                fail_unstarted_trials(study, self.heartbeat_interval + self.grace_period)
                time.sleep(1.0)
                continue
            waiting_logged = False
            self._trial(study, space, fixed, sweep_dir, started)

    def _trial(self, study: Any, space: dict[str, Any], fixed: list[str], sweep_dir: Path, started: Any) -> None:
        """One trial, as ``study.optimize`` runs one (asked, Optuna's heartbeat thread beating while
        it runs), then told with ``skip_if_finished``: another worker that found its heartbeat late
        (a busy or stopped machine) may have failed it meanwhile and queued its parameters again,
        and then its late result is dropped. (``study.optimize`` met that race with "Cannot tell a
        FAIL trial" and an AssertionError of its own, which ended the worker with a traceback.)"""
        import optuna

        trial = study.ask()
        value, outcome = None, state("FAIL")
        try:
            with heartbeat(study, trial):
                value = self._objective(study, trial, space, fixed, sweep_dir, started)
            outcome = state("COMPLETE")
        except optuna.TrialPruned:
            outcome = state("PRUNED")
        except TrialFailed:
            pass
        except BaseException as err:
            with signals_held():  # a second Ctrl-C or SIGTERM waits until the trial is told
                if interrupted(err) or is_sigterm(err):
                    self._requeue(study, trial.number, sweep_dir)
                elif isinstance(err, Exception) and storage_error(err) is None:
                    study.tell(trial, state=outcome, skip_if_finished=True)  # as optimize does; the error goes on
            raise
        with signals_held():  # a stop that comes now ends the worker once the trial is told
            told = study.tell(trial, value, state=outcome, skip_if_finished=True)
        if told.state != outcome:
            log.warning(
                f"trial {trial.number} was declared stale while it ran (heartbeat later than "
                f"{self.grace_period} s); its result is dropped, its parameters run again as a new trial"
            )
        elif outcome.name == "COMPLETE":
            log.info(f"trial {trial.number} finished: {value}")

    def _requeue(self, study: Any, number: int, sweep_dir: Path) -> None:
        """A trial during which Ctrl-C or SIGTERM came. A run that recorded its ending first (the
        signal came while its worker told Optuna) is told as it ended; one that did not is failed
        and its parameters queued again, as for a dead worker. Its half run stays until the next
        sweep of the study drops it (a run folder of a replaced trial), so that the summary of the
        stopped sweep lists it, interrupted."""
        trial = frozen(study, number)
        if trial is None or trial.state.name != "RUNNING":
            return  # told already, or failed as stale by another worker, which queued it again
        metrics = read_metrics(sweep_dir / str(number))
        status, value = metrics.get("status"), metrics.get("best")
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(number, float(value), skip_if_finished=True)
        elif status == "pruned":
            study.tell(number, state=state("PRUNED"), skip_if_finished=True)
        elif study.tell(number, state=state("FAIL"), skip_if_finished=True).state.name == "FAIL":
            retry_callback(self.max_retry)(study, frozen(study, number))

    def _objective(
        self,
        study: Any,
        trial: Any,
        space: dict[str, Any],
        fixed: list[str],
        sweep_dir: Path,
        started: Any = None,
    ) -> float:
        """Run trial ``trial.number`` as Hydra job ``trial.number``; its objective, or PRUNED or FAIL."""
        import optuna

        if started is not None:
            started(trial.number)
        if place(study, trial.number) >= self.n_trials:
            trial.set_user_attr("fail_reason", SURPLUS)
            raise TrialFailed(SURPLUS)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {key: _suggest(trial, key, distribution) for key, distribution in space.items()}
        overrides = fixed + [f"{key}={value}" for key, value in params.items()]
        log.info(f"trial {trial.number}: {' '.join(overrides)}")
        (result,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
        late = frozen(study, trial.number)
        if late is not None and late.state.name != "RUNNING":
            # Failed as stale by another worker meanwhile: nothing of this trial is told (the
            # sweep's warning says so, in _work).
            raise TrialFailed(f"trial {trial.number} was failed by another worker while it ran")
        run_dir = Path(str(result.hydra_cfg.hydra.runtime.output_dir)) if result.hydra_cfg else None
        metrics = read_metrics(run_dir) if run_dir else {}
        if result.status == JobStatus.FAILED and not metrics.get("error"):
            err = result._return_value  # private: hydra 1.3 -- the exception (return_value re-raises it)
            metrics = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        status, value = metrics.get("status"), metrics.get("best")
        if status == "pruned":
            trial.set_user_attr("pruned", one_line(str(metrics.get("error", ""))))
            raise optuna.TrialPruned(one_line(str(metrics.get("error", ""))))
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        reason = one_line(
            str(
                metrics.get("error")
                or (f"objective {value!r} is not a finite number" if status == "completed" else "no metrics.json")
            )
        )
        trial.set_user_attr("fail_reason", reason)
        log.warning(f"trial {trial.number} failed: {reason}")
        raise TrialFailed(reason)


class _Worker:
    """An Optuna worker process, as the sweep's process sees it: the trial it runs, and how it ended.
    (No dataclass: Hydra's plugin scan imports this module in a way that dataclasses cannot look up.)"""

    def __init__(self, process: Any, reader: Any) -> None:
        self.process = process
        self.reader = reader
        self.trial: int | None = None
        self.database: str | None = None  # why the study's database failed, as the worker saw it
        self.done = False

    @classmethod
    def start(cls, context: Any, sweeper: OptunaSweeper, index: int, args: tuple[Any, ...]) -> _Worker:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=sweeper._worker_main, args=(os.getpid(), writer, *args), name=f"optuna-worker-{index}"
        )
        process.start()
        writer.close()
        return cls(process, reader)

    def read(self) -> None:
        while True:
            try:
                if not self.reader.poll():
                    break
                kind, value = self.reader.recv()
            except (EOFError, OSError):
                break
            if kind == "trial":
                self.trial = value
            elif kind == "database":
                self.database = value
        if not self.process.is_alive():
            self.process.join()
            self.reader.close()
            self.done = True

    def say_how_it_ended(self, sweep_dir: Path, grace_period: int) -> None:
        """One line for a worker that ended otherwise than its sweep (killed, or stopped alone)."""
        code = self.process.exitcode
        if code in (0, 1, DATABASE_FAILED):
            return  # done; a traceback is above; the sweep's line says it
        what = f"sweep worker {self.process.name} (pid {self.process.pid}) {ending(code)}"
        if self.trial is None:
            print(f"note: {what}", file=sys.stderr, flush=True)
            return
        if code is not None and code < 0:
            record_lost(sweep_dir / str(self.trial), ending(code), self.process.pid)
            after = f"once its heartbeat is {grace_period} s old"
        else:
            after = "now"
        print(
            f"note: {what} during trial {self.trial}; its parameters run again as a new trial ({after}, in "
            "another worker, or when the same command runs again)",
            file=sys.stderr,
            flush=True,
        )


def _database_failed(err: BaseException | str, url: str) -> str:
    reason = err if isinstance(err, str) else storage_problem(err)
    return (
        f"the study's database ({hide_password(url)}) failed: {reason}; the sweep stopped, run the same "
        "command again once the database is back (the study continues)"
    )


def _instance(node: Any) -> Any:
    """Hydra instantiates the sampler and pruner nodes with the sweeper; a plain node is built here."""
    return instantiate(node) if isinstance(node, (dict, DictConfig)) else node


def _suggest(trial: Any, name: str, distribution: Any) -> Any:
    import optuna.distributions as dist

    if isinstance(distribution, dist.FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, dist.IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
    return trial.suggest_categorical(name, distribution.choices)
