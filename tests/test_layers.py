"""The package's structure as a contract: the layers of pyproject.toml's [tool.importlinter] hold
(imports inside functions included), a deliberate upward import breaks them, no module imports its
own package inside a function without saying why, no module outgrows one concern, and Hydra's
plugins (which Hydra imports in every app) load no deep learning library."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
PACKAGES = ("experiments", "hydra_plugins")
MAX_LINES = 600
# An intra-package import inside a function is allowed only with a comment on its line saying why.
MAX_LAZY_IMPORTS = 3


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layers_contract_holds() -> None:
    done = lint_imports(REPO, SRC)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    # A copy of the package in which the floor (errors.py) imports the run record from inside a
    # function, as it did when it closed a 26-module cycle: the contract must see it.
    copy = tmp_path / "src"
    for package in PACKAGES:
        shutil.copytree(SRC / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "conf"))
    errors = copy / "experiments" / "errors.py"
    errors.write_text(
        errors.read_text() + "\n\ndef _late() -> None:\n    from experiments.record import run_job  # noqa: F401\n"
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    done = lint_imports(tmp_path, copy)
    assert done.returncode != 0
    assert "experiments.errors -> experiments.record" in done.stdout


def _imports_inside_functions(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name == "__getattr__":
            continue  # a package's __getattr__ is its lazy face (PEP 562)
        for node in ast.walk(function):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else [module]
            if any(name.split(".")[0] in PACKAGES for name in names):
                found.append((node.lineno, ast.get_source_segment(path.read_text(), node) or ""))
    return found


def test_imports_of_the_package_sit_at_the_top_of_their_files() -> None:
    lazy = []
    for package in PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            lines = path.read_text().splitlines()
            for lineno, _ in _imports_inside_functions(path, package):
                lazy.append((path.relative_to(SRC), lineno, lines[lineno - 1]))
    assert len(lazy) <= MAX_LAZY_IMPORTS, lazy
    assert all("#" in line for _, _, line in lazy), f"say why each import is inside its function: {lazy}"


def test_no_module_outgrows_one_concern() -> None:
    sizes = {
        path.relative_to(SRC): len(path.read_text().splitlines())
        for package in PACKAGES
        for path in (SRC / package).rglob("*.py")
    }
    assert max(sizes.values()) <= MAX_LINES, sorted(sizes.items(), key=lambda item: -item[1])[:3]


def test_hydras_plugins_load_no_deep_learning_library() -> None:
    # Hydra imports every module under hydra_plugins when any Hydra app starts, ours or not.
    code = (
        "import sys, hydra_plugins.experiments_launcher.parallel_launcher, "
        "hydra_plugins.experiments_sweeper.optuna_sweeper; "
        "print(sorted(m for m in ('torch', 'lightning', 'optuna', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
