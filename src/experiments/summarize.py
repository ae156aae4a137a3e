"""``python -m experiments.summarize <sweep dir>``: one table per sweep, its pictures, and the winner's command.

Writes ``summary.csv``, ``summary.md`` and ``best.yaml`` into the sweep directory from its run
directories (``metrics.json``, ``config.yaml``, ``.hydra/overrides.yaml``). Every multirun calls it
at its end through the Hydra callback :class:`SummarizeSweep` (``hydra.callbacks`` in conf/hydra/).
A grid sweep also gets ``objective.png`` (the objective of every setting, mean ± std over seeds);
an Optuna sweep gets Optuna's own figures (:func:`plot_study`, called by the sweeper). ``summary.md``
shows whichever of them the folder holds.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.errors import UserError
from experiments.plotting import pyplot
from experiments.runs import read_history, read_metrics, write_atomic
from experiments.sweeps import SWEEPER_TARGET

# Completed runs first (sorted by the objective), then pruned, failed, and unfinished ones.
_STATUS_ORDER = {"completed": 0, "pruned": 1, "failed": 2, "incomplete": 3}
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
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra" / "overrides.yaml").is_file()]
    return sorted(dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], str, str]:
    """The rows of a sweep (one per run directory), its monitored metric and its mode (min or max)."""
    monitor, mode = "val/loss", "min"
    rows = []
    for run_dir in _run_dirs(sweep_dir):
        overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
        config_path = run_dir / "config.yaml"
        config = OmegaConf.load(config_path) if config_path.is_file() else None
        if isinstance(config, DictConfig):  # a run's config.yaml: a mapping
            monitor, mode = str(config.get("monitor", monitor)), str(config.get("monitor_mode", mode))
        metrics = read_metrics(run_dir)
        diagnosis = metrics.get("diagnosis") or {}
        epochs, seconds = metrics.get("epochs"), metrics.get("fit_seconds")
        if epochs is None:  # pruned or failed mid-fit: how far it got is in its history
            epochs, seconds = _history_length(run_dir)
        rows.append(
            {
                "run": run_dir.name,
                "overrides": overrides,
                "status": metrics.get("status", "incomplete"),
                "best": _number(metrics.get("best")),
                "test": {k: _number(v) for k, v in (metrics.get("test") or {}).items()},
                "epochs": epochs,
                "seconds": seconds,
                "diagnosis": diagnosis.get("verdict", ""),
                "error": metrics.get("error", ""),
            }
        )
    return rows, monitor, mode


def _sort_key(row: dict[str, Any], mode: str) -> tuple[int, float]:
    best = row["best"]
    if row["status"] != "completed" or best is None or not math.isfinite(best):
        return (_STATUS_ORDER.get(row["status"], 3) + 1, 0.0)
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
    return str(value)


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
        writer.writerow(header)
        for row in rows:
            writer.writerow(cells(row, row["overrides"]))

    write_atomic(sweep_dir / "summary.csv", write_csv)

    shown = [[o for o in r["overrides"] if o.partition("=")[0] in varying] or r["overrides"] for r in rows]
    lines = [
        f"Sweep {sweep_dir}: {len(rows)} runs, sorted by {monitor} ({mode}).",
        "",
        "| " + " | ".join(header) + " |",
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
        command = "python -m experiments.train " + " ".join(_quote(o) for o in winner["overrides"])
        best = {
            "command": command,
            "overrides": winner["overrides"],
            "run_dir": str(sweep_dir / winner["run"]),
            "monitor": monitor,
            "best": winner["best"],
            "test": winner["test"],
        }
        best_text = "# The best run of this sweep; rerun it with the command below.\n" + OmegaConf.to_yaml(best)
        write_atomic(sweep_dir / "best.yaml", lambda h: h.write(best_text))
    else:
        (sweep_dir / "best.yaml").unlink(missing_ok=True)
    return rows


def _is_optuna_sweep(sweep_dir: Path) -> bool:
    try:
        config = OmegaConf.load(sweep_dir / "multirun.yaml")
        return OmegaConf.select(config, "hydra.sweeper._target_") == SWEEPER_TARGET
    except (OSError, ValueError, Exception):
        return False


def plot_settings(rows: list[dict[str, Any]], monitor: str, mode: str, path: Path) -> bool:
    """A grid sweep's picture: the best ``monitor`` of every setting (its overrides less ``seed``),
    mean ± std over its seeds, best setting on top. False (and no file) without a completed run."""
    completed = [r for r in rows if r["status"] == "completed" and r["best"] is not None and math.isfinite(r["best"])]
    if not completed:
        path.unlink(missing_ok=True)
        return False
    varying = _varying(rows) - _SEED_KEYS
    groups: dict[str, list[float]] = {}
    for row in completed:
        setting = " ".join(o for o in row["overrides"] if o.partition("=")[0] in varying) or "all runs"
        groups.setdefault(setting, []).append(row["best"])
    stats = [(k, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()]
    stats.sort(key=lambda s: s[1], reverse=mode != "min")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(stats)))
    positions = list(range(len(stats)))[::-1]
    ax.errorbar([s[1] for s in stats], positions, xerr=[s[2] for s in stats], fmt="o", capsize=4)
    ax.set_yticks(positions, [f"{s[0]} (n={s[3]})" for s in stats], fontsize=8)
    ax.set_xlabel(f"best {monitor} ({mode}), mean ± std over seeds")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


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
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _quote(override: str) -> str:
    return f"'{override}'" if any(c in override for c in " []()$,*?") else override


# How a multirun ends when it ran to its end but not every trial completed (or was pruned): the
# summary is written, and a script sees that something needs a look.
INCOMPLETE_EXIT = 3


class SummarizeSweep(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends, and end the command with
    exit code 3 (:data:`INCOMPLETE_EXIT`) and one line when a trial failed, was interrupted, killed
    or lost."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir() and _run_dirs(sweep_dir):
            rows = summarize(sweep_dir)
            done = sum(r["status"] == "completed" for r in rows)
            print(f"summary: {done}/{len(rows)} runs completed | {sweep_dir / 'summary.md'}", flush=True)
            others = Counter(r["status"] for r in rows if r["status"] not in ("completed", "pruned"))
            if others:
                how = ", ".join(f"{n} {status}" for status, n in sorted(others.items()))
                print(
                    f"error: {sum(others.values())} of {len(rows)} runs did not complete ({how}); see "
                    f"{sweep_dir / 'summary.md'}",
                    file=sys.stderr,
                    flush=True,
                )
                # A SystemExit passes Hydra's callback guard (which turns exceptions into warnings).
                raise SystemExit(INCOMPLETE_EXIT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the folder of a multirun (holds one folder per run)")
    args = parser.parse_args(argv)
    try:
        summarize(args.sweep_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print((args.sweep_dir / "summary.md").read_text(), end="")


if __name__ == "__main__":
    main()
