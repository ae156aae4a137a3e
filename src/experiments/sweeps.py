"""What the Optuna sweeper and its trials share: the study's storage, and a running trial by number.

The sweeper (``hydra_plugins/experiments_sweeper``) launches trial number N as Hydra job number N,
so a trial finds itself in the study from the job's Hydra config alone, whether it runs in the
sweeper's process, a forked worker, or a SLURM job that reads the same storage.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from experiments.errors import causes, one_line

SWEEPER_TARGET = "hydra_plugins.experiments_sweeper.optuna_sweeper.OptunaSweeper"


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The study's storage: ``storage`` (any SQLAlchemy URL) or a SQLite file in the sweep directory."""
    if storage:
        return storage
    return f"sqlite:///{(Path(sweep_dir) / 'optuna.db').resolve()}"


def open_storage(url: str, retries: int = 5, **heartbeat: Any) -> Any:
    """An RDB storage that waits for SQLite's lock rather than failing when trials report at once.

    ``heartbeat``: RDBStorage's ``heartbeat_interval``, ``grace_period`` and stale-trial callback.
    Two processes creating the same new database at once race on its schema (``UNIQUE constraint
    failed: alembic_version``, ``relation ... already exists``); the loser tries again, and then
    finds the schema the winner made.
    """
    # Optuna and SQLAlchemy (0.8 s to import) only for a sweep: Hydra imports the sweeper, and so
    # this module, in every run.
    import optuna
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(retries + 1):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            if attempt == retries:
                raise
            time.sleep(0.2 + random.random())
            continue
        if url.startswith("sqlite") and storage.engine.url.database not in (None, "", ":memory:"):
            _write_locked_transactions(storage.engine)  # a database file that other processes share
        return storage
    raise AssertionError("unreachable")


def _write_locked_transactions(engine: Any) -> None:
    """Every transaction on this SQLite engine takes the database's write lock as it begins
    (``BEGIN IMMEDIATE``), as ``SELECT ... FOR UPDATE`` does on PostgreSQL.

    Optuna reads a row and then writes it in one transaction (a queued trial taken by ``ask``, a
    running trial failed as stale), and counts on the database to keep that read valid; SQLite's
    driver begins a transaction only at its first write, so two workers both took one queued trial
    and ran it in the same folder (4 processes asking at once: 7 rounds of 8). SQLAlchemy's recipe
    for SQLite transactions: the driver begins none itself, SQLAlchemy's ``begin`` does."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(connection: Any, record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections that opening the storage made: new ones are set up as above


def optuna_trial(study: Any, number: int) -> Any:
    """The running trial ``number`` of ``study``, as Optuna hands a trial to a worker, or None.

    ``optuna.trial.Trial(study, trial_id)`` is Optuna's own way; the id has no public getter.
    """
    import optuna

    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return None if frozen is None else optuna.trial.Trial(study, frozen._trial_id)  # private: optuna 4-5


def storage_error(err: BaseException) -> BaseException | None:
    """The database error that ``err`` comes from (SQLAlchemy's, or Optuna's StorageInternalError,
    which says "invalid data in the commit" whatever went wrong), innermost first; None for any
    other error. Looked up only where SQLAlchemy and Optuna are loaded (a sweep)."""
    kinds = tuple(
        kind
        for module, name in (("sqlalchemy.exc", "SQLAlchemyError"), ("optuna.exceptions", "StorageInternalError"))
        if (kind := getattr(sys.modules.get(module), name, None)) is not None
    )
    found = [e for e in causes(err) if kinds and isinstance(e, kinds)]
    return found[-1] if found else None


def storage_problem(err: BaseException) -> str:
    """What went wrong with the study's database, in one line (the driver's own words)."""
    inner = storage_error(err) or err
    text = str(getattr(inner, "orig", None) or inner).strip()
    return one_line(text.splitlines()[0] if text else type(inner).__name__)[:200]


@contextlib.contextmanager
def quiet_heartbeat_failures() -> Iterator[None]:
    """While inside, a database error in a thread (Optuna's heartbeat thread, when the database goes
    away) ends that thread without a traceback: the sweep's own next call to the database meets the
    same error and says it in one line. Any other error of a thread is printed as before."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if args.exc_value is None or storage_error(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
