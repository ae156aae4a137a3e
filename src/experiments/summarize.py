"""``python -m experiments.summarize <sweep dir>``: one table per sweep, its pictures, and the winner's command.

Writes ``summary.csv``, ``summary.md`` and ``best.yaml`` into the sweep directory from its run
directories (``metrics.json``, ``config.yaml``, ``.hydra/overrides.yaml``). Every multirun calls it
at its end through the Hydra callback :class:`SummarizeSweep` (``hydra.callbacks`` in conf/hydra/),
and the sweep plugins when a signal stops the sweep or its study's database goes away
(:func:`finish_sweep`: the one place that says how a multirun ended, and with which exit code).
A grid sweep also gets ``objective.png`` (the objective of every setting, mean ± std over seeds);
an Optuna sweep gets Optuna's own figures (:func:`plot_study`, called by the sweeper). ``summary.md``
shows whichever of them the folder holds.

A sweep folder is data that anyone may have written: a damaged file makes its trial's row say so
(status ``damaged``), every text that reaches a table or the terminal is one printable line, and
best.yaml's command is quoted for a shell (``shlex.quote``).
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.errors import INCOMPLETE_EXIT, SweepIncomplete, UserError, describe, one_line, printable
from experiments.plotting import pyplot
from experiments.runs import METRICS, held_by, read_history, read_metrics, read_yaml_text, write_atomic
from experiments.sweeps import SWEEPER_TARGET

# Completed runs first (sorted by the objective), then pruned, failed, stopped, unfinished and
# unreadable ones.
_STATUS_ORDER = {
    "completed": 0,
    "pruned": 1,
    "failed": 2,
    "interrupted": 3,
    "killed": 4,
    "incomplete": 5,
    "damaged": 6,
}
# The statuses of a trial that count as done: a pruned trial is one the search decided to stop.
COMPLETE = ("completed", "pruned")
BEST_HEADER = "# The best run of this sweep; rerun it with the command below."
_SEED_KEYS = {"seed"}
# Pictures of a sweep, in the order summary.md shows them.
OPTUNA_FIGURES = {
    "optuna_history.png": "optimization history",
    "optuna_importances.png": "parameter importances",
    "optuna_parallel_coordinate.png": "parallel coordinates",
}
GRID_FIGURE = "objective.png"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _history_length(run_dir: Path) -> tuple[int | None, float | None]:
    """Epochs and seconds recorded in a run's ``history.csv``, or (None, None) without one."""
    rows = read_history(run_dir)
    if not rows:
        return None, None
    seconds = [_number(r.get("seconds")) for r in rows]
    return len(rows), round(sum(s for s in seconds if s is not None), 3)


def _run_dirs(sweep_dir: Path) -> list[Path]:
    """The trial folders of a sweep: those with Hydra's overrides, or with a record of how the
    trial ended (a trial whose worker was killed before Hydra's files were written)."""
    dirs = [
        d
        for d in sweep_dir.iterdir()
        if d.is_dir() and ((d / ".hydra" / "overrides.yaml").is_file() or (d / METRICS).is_file())
    ]
    return sorted(dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def _read_yaml(path: Path) -> tuple[Any, str | None]:
    """A YAML file as plain data, read safely (no tags, no interpolations resolved), or ``None``
    and why it could not be read."""
    try:
        return yaml.safe_load(read_yaml_text(path)), None
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: not UTF-8, or not a file
        reason = one_line(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        return None, f"cannot read {path.parent.name}/{path.name}: {reason[:120]}"


def _overrides(run_dir: Path) -> tuple[list[str], str | None]:
    """A trial's overrides (``.hydra/overrides.yaml``), or ``[]`` and what is wrong with the file."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return [], None
    loaded, problem = _read_yaml(path)
    if problem is not None:
        return [], problem
    if not isinstance(loaded, list) or not all(isinstance(o, (str, int, float, bool)) for o in loaded):
        return [], ".hydra/overrides.yaml is not a list of overrides"
    return [str(o) for o in loaded], None


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], str, str]:
    """The rows of a sweep (one per run directory), its monitored metric and its mode (min or max).

    A trial folder without ``metrics.json`` is ``incomplete`` (its process is still running, or
    was lost); one whose ``metrics.json`` or overrides cannot be read is ``damaged``."""
    monitor, mode = "val/loss", "min"
    rows = []
    for run_dir in _run_dirs(sweep_dir):
        overrides, damage = _overrides(run_dir)
        config, _ = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else (None, None)
        if isinstance(config, dict):  # a run's config.yaml: a mapping (a damaged one is only not read)
            monitor = str(config.get("monitor", monitor))
            mode = str(config.get("monitor_mode", mode))
        metrics = read_metrics(run_dir)
        status = metrics.get("status", "incomplete")
        if (run_dir / METRICS).exists() and not metrics:  # a pipe or a device there included
            damage = damage or f"{METRICS} is damaged (not a JSON object)"
        elif not isinstance(status, str):
            damage = damage or f"{METRICS} holds no status"
        diagnosis = metrics.get("diagnosis")
        test = metrics.get("test")
        epochs, seconds = _number(metrics.get("epochs")), _number(metrics.get("fit_seconds"))
        if epochs is None:  # pruned or failed mid-fit: how far it got is in its history
            epochs, seconds = _history_length(run_dir)
        rows.append(
            {
                "run": run_dir.name,
                "overrides": overrides,
                "status": "damaged" if damage else status,
                "best": _number(metrics.get("best")),
                "test": {str(k): _number(v) for k, v in test.items()} if isinstance(test, dict) else {},
                "epochs": int(epochs) if epochs is not None and math.isfinite(epochs) else None,
                "seconds": seconds,
                "diagnosis": str(diagnosis.get("verdict", "")) if isinstance(diagnosis, dict) else "",
                "error": damage or str(metrics.get("error") or ""),
            }
        )
    return rows, monitor, mode


def _sort_key(row: dict[str, Any], mode: str) -> tuple[int, float]:
    best = row["best"]
    if row["status"] != "completed" or best is None or not math.isfinite(best):
        return (_STATUS_ORDER.get(row["status"], len(_STATUS_ORDER)) + 1, 0.0)
    return (0, best if mode == "min" else -best)


def _varying(rows: list[dict[str, Any]]) -> set[str]:
    """Override keys whose value (or absence) differs between runs."""
    parsed = [dict(o.partition("=")[::2] for o in row["overrides"]) for row in rows]
    keys = {k for overrides in parsed for k in overrides}
    return {k for k in keys if len({overrides.get(k) for overrides in parsed}) > 1}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return one_line(str(value))


def _text(value: Any) -> Any:
    """A cell of summary.csv: text as one printable line, numbers as they are."""
    return one_line(value) if isinstance(value, str) else value


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write summary.csv, summary.md and best.yaml into ``sweep_dir``; returns the sorted rows."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory not found: {sweep_dir}; pass the folder of a multirun")
    rows, monitor, mode = collect(sweep_dir)
    if not rows:
        raise UserError(
            f"no run directories in {sweep_dir} (folders with .hydra/overrides.yaml); "
            "pass the folder of a multirun, e.g. outputs/<name>/multiruns/<time>"
        )
    rows.sort(key=lambda r: _sort_key(r, mode))
    test_keys = sorted({k for r in rows for k in r["test"]})
    varying = _varying(rows)
    best_column = f"best {monitor}"
    header = ["run", "overrides", "status", best_column, *test_keys, "epochs", "seconds", "diagnosis", "error"]

    def cells(row: dict[str, Any], overrides: list[str]) -> list[Any]:
        return [
            row["run"],
            " ".join(overrides),
            row["status"],
            row["best"],
            *(row["test"].get(k) for k in test_keys),
            row["epochs"],
            row["seconds"],
            row["diagnosis"],
            row["error"],
        ]

    def write_csv(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow([_text(h) for h in header])
        for row in rows:
            writer.writerow([_text(c) for c in cells(row, row["overrides"])])

    write_atomic(sweep_dir / "summary.csv", write_csv)

    shown = [[o for o in r["overrides"] if o.partition("=")[0] in varying] or r["overrides"] for r in rows]
    lines = [
        f"Sweep {printable(str(sweep_dir))}: {len(rows)} runs, sorted by {_fmt(monitor)} ({_fmt(mode)}).",
        "",
        "| " + " | ".join(_fmt(h).replace("|", "\\|") for h in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    for row, overrides in zip(rows, shown):
        text = [_fmt(c).replace("|", "\\|") for c in cells(row, overrides)]
        lines.append("| " + " | ".join(text) + " |")
    completed = [r for r in rows if r["status"] == "completed"]
    if varying and set(varying) <= _SEED_KEYS and len(completed) > 1:
        numeric = [best_column, *test_keys]
        values = {
            best_column: [r["best"] for r in completed],
            **{k: [r["test"].get(k) for r in completed] for k in test_keys},
        }
        stats = []
        for key in numeric:
            xs = [x for x in values[key] if x is not None]
            stats.append(f"{statistics.mean(xs):.4g} ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else "")
        lines.append("| mean ± std | " + f"{len(completed)} seeds" + " | | " + " | ".join(stats) + " | | | | |")
    if not _is_optuna_sweep(sweep_dir):
        plot_settings(rows, monitor, mode, sweep_dir / GRID_FIGURE)
    figures = {GRID_FIGURE: f"{monitor} per setting, mean ± std over seeds", **OPTUNA_FIGURES}
    for name, title in figures.items():
        if (sweep_dir / name).is_file():
            lines += ["", f"![{title}]({name})"]
    write_atomic(sweep_dir / "summary.md", lambda h: h.write("\n".join(lines) + "\n"))

    if completed:
        winner = completed[0]
        command = " ".join(["python -m experiments.train", *(shlex.quote(o) for o in winner["overrides"])])
        best = {
            "command": command,
            "overrides": winner["overrides"],
            "run_dir": str(sweep_dir / winner["run"]),
            "monitor": monitor,
            "best": winner["best"],
            "test": winner["test"],
        }
        best_text = f"{BEST_HEADER}\n" + OmegaConf.to_yaml(best)
        write_atomic(sweep_dir / "best.yaml", lambda h: h.write(best_text))
    else:
        _remove_own(sweep_dir / "best.yaml", BEST_HEADER.encode())
    return rows


def _remove_own(path: Path, mark: bytes) -> None:
    """Remove a file that an earlier summary wrote (it begins with ``mark``), now out of date; a
    file of that name that someone else put there stays."""
    if not path.is_file():  # a pipe there would block the read; a link to a device never end it
        return
    try:
        with path.open("rb") as handle:
            ours = mark in handle.read(1024)
    except OSError:
        return
    if ours:
        path.unlink(missing_ok=True)


def incomplete_line(rows: list[dict[str, Any]], sweep_dir: Path) -> str | None:
    """``N of M trials did not complete (1 failed, 1 killed); see <sweep dir>/summary.md``, or None
    when every trial completed (or was pruned)."""
    missing = Counter(str(r["status"]) for r in rows if r["status"] not in COMPLETE)
    if not missing:
        return None
    what = ", ".join(
        f"{n} {one_line(status)}" for status, n in sorted(missing.items(), key=lambda s: _STATUS_ORDER.get(s[0], 9))
    )
    return (
        f"{sum(missing.values())} of {len(rows)} trials did not complete ({what}); "
        f"see {printable(str(sweep_dir / 'summary.md'))}"
    )


def finish_sweep(sweep_dir: Path, problem: str | None = None, stopped: bool = False) -> None:
    """Summarise a multirun however it ended, and say how it ended: the one place that does.

    Writes summary.csv, summary.md and best.yaml for what the trial folders hold and prints the
    ``summary:`` line. Then, unless a signal stopped the sweep (``stopped``: its caller ends with
    the signal's line and code, 130 or 143), raises :class:`~experiments.errors.SweepIncomplete`
    (exit code 3, one line) when a trial did not complete, or with ``problem`` (a sweep that could
    not run to its end, e.g. its study's database went away); returns when every trial completed."""
    rows = summarize(sweep_dir) if sweep_dir.is_dir() and _run_dirs(sweep_dir) else []
    if not rows and sweep_dir.is_dir():
        _no_trial_summary(sweep_dir)
    if rows:
        completed = sum(r["status"] == "completed" for r in rows)
        pruned = sum(r["status"] == "pruned" for r in rows)
        also = f", {pruned} pruned" if pruned else ""
        where = printable(str(sweep_dir / "summary.md"))
        print(f"summary: {completed}/{len(rows)} runs completed{also} | {where}", flush=True)
    if stopped:
        return
    line = incomplete_line(rows, sweep_dir)
    if problem is not None:
        done = sum(r["status"] in COMPLETE for r in rows)
        line = f"{problem}; {done} trials of this sweep folder completed" + (
            f" (see {printable(str(sweep_dir / 'summary.md'))})" if rows else ""
        )
    if line is not None:
        raise SweepIncomplete(line)


def _no_trial_summary(sweep_dir: Path) -> None:
    """The summary of a sweep that ended with no trial folder (stopped before any trial kept one:
    an Optuna sweep drops the half runs of the trials it queues again), so that every sweep ends
    with one; no best.yaml of ours is left from an earlier state of the folder."""
    where = printable(str(sweep_dir))
    text = (
        f"Sweep {where}: no trial has a run folder yet (the sweep stopped before any trial kept one); "
        "run the same command again to continue it.\n"
    )
    write_atomic(sweep_dir / "summary.md", lambda h: h.write(text))
    write_atomic(sweep_dir / "summary.csv", lambda h: h.write("run,overrides,status\n"))
    _remove_own(sweep_dir / "best.yaml", BEST_HEADER.encode())
    print(f"summary: 0/0 runs completed | {printable(str(sweep_dir / 'summary.md'))}", flush=True)


def _is_optuna_sweep(sweep_dir: Path) -> bool:
    try:
        config = OmegaConf.create(read_yaml_text(sweep_dir / "multirun.yaml"))
        return OmegaConf.select(config, "hydra.sweeper._target_") == SWEEPER_TARGET
    except (OSError, ValueError, Exception):
        return False


def plot_settings(rows: list[dict[str, Any]], monitor: str, mode: str, path: Path) -> bool:
    """A grid sweep's picture: the best ``monitor`` of every setting (its overrides less ``seed``),
    mean ± std over its seeds, best setting on top. False (and no file of ours) without a completed run."""
    completed = [r for r in rows if r["status"] == "completed" and r["best"] is not None and math.isfinite(r["best"])]
    if not completed:
        _remove_own(path, b"Matplotlib")  # matplotlib names itself in the PNGs it writes
        return False
    varying = _varying(rows) - _SEED_KEYS
    groups: dict[str, list[float]] = {}
    for row in completed:
        setting = one_line(" ".join(o for o in row["overrides"] if o.partition("=")[0] in varying)) or "all runs"
        groups.setdefault(setting, []).append(row["best"])
    stats = [(k, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()]
    stats.sort(key=lambda s: s[1], reverse=mode != "min")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(stats)))
    positions = list(range(len(stats)))[::-1]
    ax.errorbar([s[1] for s in stats], positions, xerr=[s[2] for s in stats], fmt="o", capsize=4)
    ax.set_yticks(positions, [_label(f"{s[0]} (n={s[3]})") for s in stats], fontsize=8)
    ax.set_xlabel(_label(f"best {monitor} ({mode}), mean ± std over seeds"))
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(_label(path.parent.name))
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _label(text: str) -> str:
    """Text from a sweep's files as matplotlib shows it, not as mathtext (``$\\foo{$`` in an
    override would stop the figure with a parse error)."""
    return printable(text).replace("$", r"\$")


def save_figure(figure: Any, path: Path) -> None:
    """A PNG written as the folder's own file: through a new file renamed over ``path``, so a link
    or a pipe found there (in a received sweep folder) is replaced, never written through."""
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=100), binary=True)


def plot_study(study: Any, sweep_dir: str | Path) -> list[Path]:
    """Optuna's matplotlib figures of ``study`` as PNGs in ``sweep_dir``: the optimization history,
    the parameter importances (with two parameters or more) and the parallel coordinates."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as figures

    sweep_dir = Path(sweep_dir)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = {name for t in complete for name in t.params}
    plots: list[tuple[str, Callable[[Any], Any], int]] = [("optuna_history.png", figures.plot_optimization_history, 1)]
    if len(names) >= 2:
        plots.append(("optuna_importances.png", figures.plot_param_importances, 2))
    plots.append(("optuna_parallel_coordinate.png", figures.plot_parallel_coordinate, 1))
    plt = pyplot()
    written = []
    for name, plot, needed in plots:
        path = sweep_dir / name
        if len(complete) < needed:
            path.unlink(missing_ok=True)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib figures experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as err:  # e.g. importances of parameters that never varied
                print(f"summary: no {name}: {err}", file=sys.stderr)
                continue
        figure: Any = (ax.flat[0] if hasattr(ax, "flat") else ax).figure  # a Figure (typed as maybe a SubFigure)
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        save_figure(figure, path)
        plt.close(figure)
        written.append(path)
    return written


class SummarizeSweep(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends, and end the command with
    exit code 3 and one line when a trial did not complete (:func:`finish_sweep`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_sweep(Path(str(config.hydra.sweep.dir)))


def main(argv: list[str] | None = None) -> None:
    """Exit code 0 when every trial completed (or was pruned), 3 (and one line) when one did not,
    2 for a folder that is not a sweep's."""
    parser = argparse.ArgumentParser(prog="python -m experiments.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the folder of a multirun (holds one folder per run)")
    args = parser.parse_args(argv)
    holder = held_by(args.sweep_dir)
    if holder is not None:  # its running trials are no result yet; it writes its summary when it ends
        who = f"the sweep of process {holder.get('pid')} on {holder.get('host')}" if holder else "a running sweep"
        print(
            f"error: {printable(f'{args.sweep_dir} is in use by {who}')}; it writes its own summary when it ends: "
            "summarize it then (nothing was written)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        rows = summarize(args.sweep_dir)
    except Exception as err:
        message = describe(err)  # a user's mistake, or a file that cannot be written: one line
        if message is None:
            raise
        print(f"error: {printable(message)}", file=sys.stderr)
        sys.exit(2)
    print((args.sweep_dir / "summary.md").read_text(encoding="utf-8"), end="", flush=True)
    line = incomplete_line(rows, args.sweep_dir)
    if line is not None:
        print(f"error: {line}", file=sys.stderr)
        sys.exit(INCOMPLETE_EXIT)


if __name__ == "__main__":
    main()
