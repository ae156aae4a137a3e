"""Where things are: the configs, the data sets, the run folders; and the resolvers that say so in
``conf/`` (``${data_root:}``, ``${run_dir:...}``, ``${folder_name:...}``, ``${pid:}``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.checkpoints import LAST
from experiments.errors import UserError
from experiments.runs import check_no_links

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_DIR.parents[1]
# A clone (or an editable install of one) reads the top-level conf/ itself; an installed wheel reads
# the copy that the build put into the package (setup.py), so conf/ has one source in git.
IN_CLONE = (PROJECT_ROOT / "conf" / "train.yaml").is_file()
CONFIG_DIR = str(PROJECT_ROOT / "conf" if IN_CLONE else PACKAGE_DIR / "conf")


def data_root() -> Path:
    """Where data sets live: ``$EXPERIMENTS_DATA``, else a clone's ``data/`` (MNIST shipped there),
    else the user cache of an installed package (``$XDG_CACHE_HOME/experiments``, by default
    ``~/.cache/experiments``), into which missing data sets are downloaded."""
    if os.environ.get("EXPERIMENTS_DATA"):
        return Path(os.environ["EXPERIMENTS_DATA"]).expanduser()
    if IN_CLONE:
        return PROJECT_ROOT / "data"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "experiments"


# Run directories end in the process id: two runs started in the same second on one machine
# are different processes, so they never share a directory. Cached, so that the jobs of a sweep
# (which Hydra recomposes from the sweep's config and its resolver cache) in worker processes
# still resolve the sweep directory of the process that started the sweep.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT if IN_CLONE else Path.cwd()), replace=True)
# paths.data_dir, and whether missing data sets may be fetched (not in a clone: it ships its data).
OmegaConf.register_new_resolver("data_root", lambda: str(data_root()), replace=True)
OmegaConf.register_new_resolver("fetch_missing_data", lambda: not IN_CLONE, replace=True)


def folder_name(name: Any) -> str:
    """A ``name`` (or study name) that is one folder inside ``outputs/`` (resolver ``${folder_name:...}``)."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise UserError(
            f"name={text!r} must be one folder name: no '/', '\\' or '..' (runs go to outputs/<name>/); "
            "pass name=my_experiment"
        )
    return text


OmegaConf.register_new_resolver("folder_name", folder_name, replace=True)


def run_directory(runs: str, fresh: str, resume: Any = None) -> str:
    """Hydra's run directory (resolver ``${run_dir:...}``): ``runs/fresh`` for a new run, or the
    directory of the run to continue for ``resume=latest`` or ``resume=<run dir>``.

    ``latest`` is the run under ``runs`` whose ``checkpoints/last.ckpt`` was written last.
    """
    if resume is None or resume is False or str(resume) in ("", "false", "False"):
        return f"{runs}/{fresh}"
    if str(resume) == "latest":
        candidates = [p.parent.parent for p in Path(runs).glob(f"*/{LAST}")]
        if not candidates:
            raise UserError(
                f"resume=latest: no run in {runs}/ has a {LAST} to continue from; "
                "start a new run without resume=, or pass resume=<run dir>"
            )
        latest = max(candidates, key=lambda d: (d / LAST).stat().st_mtime)
        check_no_links(latest)  # before Hydra opens its train.log there
        return str(latest)
    directory = Path(str(resume)).expanduser()
    if not (directory / LAST).is_file():
        raise UserError(f"resume={resume}: no {LAST} in that directory; pass resume=latest or the directory of a run")
    check_no_links(directory)  # before Hydra opens its train.log there
    return str(directory)


# hydra.run.dir: a fresh directory, or the run that resume=latest|<run dir> continues.
OmegaConf.register_new_resolver("run_dir", run_directory, replace=True)
