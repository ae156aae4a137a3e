"""The build step that puts the top-level ``conf/`` into the wheel as ``experiments/conf``.

``conf/`` stays the single source in git. Only built packages (wheels, and installs from a wheel or
an sdist) get the copy; an editable install and a clone read the top-level ``conf/`` itself
(``experiments.config.CONFIG_DIR``). Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class build_py_with_conf(build_py):  # noqa: N801 - setuptools' command naming
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the clone's conf/ directly
            return
        if not (CONF / "train.yaml").is_file():
            raise FileNotFoundError(f"{CONF}/train.yaml not found: build from a clone or an sdist of it")
        target = Path(self.build_lib) / "experiments" / "conf"
        shutil.rmtree(target, ignore_errors=True)  # a stale copy would keep deleted configs
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": build_py_with_conf})
