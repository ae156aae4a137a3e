"""The study in its storage, as the sweeper's processes share it: which trials count towards
``n_trials``, which a retry replaced, and settling trials whose worker is gone.

Optuna 4 and 5 both: its heartbeat retry callback and RDBStorage's keyword for it were renamed in 4.9.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments.redact import redact

log = logging.getLogger("hydra_plugins.experiments_sweeper.optuna_sweeper")

SURPLUS = "surplus: other workers took the study's last trials first; not run"


def quiet_optuna_warnings() -> None:
    """Heartbeats, their retry callback and fail_stale_trials are 'experimental' in Optuna 4 and 5
    (and heartbeats 'supposed to be used with Study.optimize', whose way of running a trial the
    sweeper's own follows); and a trial that failed as expected (the sweeper's own line says why)
    or was stopped by Ctrl-C needs no traceback from Optuna."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    # The sweeper runs each trial as Study.optimize does, heartbeats included (OptunaSweeper._trial).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    optimize = logging.getLogger("optuna.study._optimize")  # where Optuna logs a failed trial
    if _expected_failure not in optimize.filters:
        optimize.addFilter(_expected_failure)
    # A stop (Ctrl-C, SIGTERM) that lands while SQLAlchemy closes a connection goes on as raised
    # (SQLAlchemy re-raises it) and ends the worker; the sweep says it in one line, so SQLAlchemy's
    # "Exception closing connection" record of it, with its traceback, is left out.
    for pool in ("sqlalchemy.pool.impl.QueuePool", "sqlalchemy.pool.impl.NullPool"):
        if _stop not in logging.getLogger(pool).filters:
            logging.getLogger(pool).addFilter(_stop)


def _stop(record: logging.LogRecord) -> bool:
    """False (left out) for a record of Ctrl-C or SIGTERM (a SystemExit such as Terminated)."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, (KeyboardInterrupt, SystemExit))


def _expected_failure(record: logging.LogRecord) -> bool:
    """Keep Optuna's "Trial N failed" record for a trial that failed as expected out of the log
    (the sweeper says why in one line, a stop says so once); any other stays, traceback and all."""
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and type(error).__name__ in ("TrialFailed", "KeyboardInterrupt"))


def retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that queues a stale trial's parameters again (renamed in Optuna 4.9)."""
    import optuna

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    return retry(max_retry=max_retry)


def stale_callback_argument() -> str:
    """RDBStorage's keyword for that callback: failed_trial_callback before Optuna 4.9."""
    import inspect

    import optuna

    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    return (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )


def heartbeat(study: Any, trial: Any) -> Any:
    """Optuna's heartbeat thread of a running trial, as ``study.optimize`` runs it (a context
    manager; nothing without heartbeats)."""
    from optuna.storages._heartbeat import get_heartbeat_thread  # private: optuna 4-5, what optimize uses

    return get_heartbeat_thread(trial._trial_id, study._storage)  # private: optuna 4-5


def fail_stale_trials(study: Any) -> None:
    import optuna

    optuna.storages.fail_stale_trials(study)


def replaced(trials: list[Any]) -> set[int]:
    """Numbers of the trials that a retry replaced (stale or interrupted ones)."""
    retry = retry_callback(None)
    return {number for t in trials for number in retry.retry_history(t)}


def tally(study: Any) -> tuple[list[Any], int]:
    """The trials that count towards n_trials (all but replaced and surplus ones), and how many of
    them are finished (complete, pruned or failed)."""
    trials = study.get_trials(deepcopy=False)
    gone = replaced(trials)
    counted = [t for t in trials if t.number not in gone and t.user_attrs.get("fail_reason") != SURPLUS]
    done = sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in counted)
    return counted, done


def place(study: Any, number: int) -> int:
    """How many counted trials come before trial ``number``. The storage numbers trials one at a
    time (it locks the study row), so every trial numbered before it is already there."""
    counted, _ = tally(study)
    return sum(1 for t in counted if t.number < number)


def frozen(study: Any, number: int) -> Any:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def fail_unstarted_trials(study: Any, seconds: float) -> None:
    """A worker killed between asking for a trial and its first heartbeat leaves a running trial
    that never becomes stale: failed, and retried, once it is ``seconds`` old without a worker name."""
    for trial in study.get_trials(deepcopy=False, states=(state("RUNNING"),)):
        started = trial.datetime_start or datetime.now()
        if "worker" in trial.user_attrs or (datetime.now() - started).total_seconds() < seconds:
            continue
        try:
            study.tell(trial.number, state=state("FAIL"))
        except Exception:  # another worker settled it first
            continue
        retry_callback(None)(study, frozen(study, trial.number))


def drop_replaced_runs(study: Any, sweep_dir: Path) -> None:
    """Remove the run directories of trials that a retry replaced: half a run, nothing in it is a result."""
    for number in sorted(replaced(study.get_trials(deepcopy=False))):
        run_dir = sweep_dir / str(number)
        if run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            log.warning(f"trial {number} stopped with its worker; its parameters run again as a new trial")


def hide_password(url: str) -> str:
    """The storage URL as shown in messages and logs: without its password, wherever it sits."""
    return redact(url)


def state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]
