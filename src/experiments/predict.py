"""``python -m experiments.predict ckpt_path=... [inputs=FILE.csv] [output=FILE.csv]``.

Like Keras's ``model.predict``: outputs of a trained model for its run's test split, or for the
rows of a CSV file, written to a CSV file and summarised on screen.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
import torch
from omegaconf import DictConfig

from experiments.config import CONFIG_DIR
from experiments.data.loader import InMemoryLoader
from experiments.data.spec import DataSpec
from experiments.errors import UserError, run_cli, user_errors_exit
from experiments.evaluate import restore
from experiments.runs import load_run_config, run_dir_of, write_atomic


def read_inputs(path: str | Path, spec: DataSpec) -> torch.Tensor:
    """Samples from a CSV file: one per row, its features flattened, an optional header row."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"inputs file not found: {file}; pass inputs=<CSV file with one sample per row>")
    rows = [r for r in csv.reader(file.read_text().splitlines()) if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    width = 1
    for d in spec.input_shape:
        width *= d
    for number, row in enumerate(rows, start=1):
        if len(row) != width or not _numeric(row):
            raise UserError(
                f"{file}: data row {number} should hold {width} numbers (input shape "
                f"{list(spec.input_shape)}), got {row[:5]}{'...' if len(row) > 5 else ''}"
            )
    if not rows:
        raise UserError(f"{file} holds no samples")
    return torch.tensor([[float(v) for v in r] for r in rows]).view(-1, *spec.input_shape)


def _check_writable(path: Path) -> None:
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: {folder} is not a writable folder; pass output=<writable path>")


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def _columns(name: str, values: torch.Tensor) -> dict[str, list[float]]:
    flat = values.reshape(len(values), -1)
    if flat.shape[1] == 1:
        return {name: flat[:, 0].tolist()}
    return {f"{name}_{i}": flat[:, i].tolist() for i in range(flat.shape[1])}


def predict(cfg: DictConfig) -> Path:
    """Write the predictions of ``cfg.ckpt_path`` to a CSV file and return its path."""
    # Bad inputs or an unwritable output are refused before the model and trainer are built.
    _, run_cfg = load_run_config(cfg.ckpt_path)
    given = read_inputs(cfg.inputs, instantiate(run_cfg.data).spec) if cfg.inputs else None
    if cfg.output:
        _check_writable(Path(cfg.output))
    ckpt, run_cfg, datamodule, task, trainer = restore(cfg.ckpt_path)
    spec = datamodule.spec
    targets = None
    if given is not None:
        inputs = given
    else:
        datamodule.setup("test")
        inputs, targets = datamodule.test_set  # type: ignore[misc]
    loader = InMemoryLoader(inputs, batch_size=datamodule.eval_batch_size)
    batches = trainer.predict(task, dataloaders=loader, ckpt_path=str(ckpt), weights_only=True)
    outputs = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}  # type: ignore[index]

    table: dict[str, list[Any]] = {}
    if inputs[0].numel() <= 16:  # small inputs are worth repeating beside their predictions
        table.update(_columns("input", inputs))
    if targets is not None:
        table.update(_columns("target", targets))
    for name, values in outputs.items():
        table.update(_columns(name, values))

    output = Path(cfg.output) if cfg.output else run_dir_of(ckpt) / "predictions.csv"

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(table)
        writer.writerows(zip(*table.values()))

    write_atomic(output, write)
    _summarise(table, outputs, targets, spec, output, int(cfg.show))
    return output


def _summarise(
    table: dict[str, list[Any]],
    outputs: dict[str, torch.Tensor],
    targets: torch.Tensor | None,
    spec: DataSpec,
    output: Path,
    show: int,
) -> None:
    names = [n for n in table if not n.startswith("probability_")]
    print(" ".join(names))
    for row in list(zip(*(table[n] for n in names)))[:show]:
        print(" ".join(f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}" for v in row))
    count = len(next(iter(table.values())))
    line = f"{count} predictions -> {output}"
    if targets is not None and spec.task == "classification":
        correct = (outputs["prediction"].long().view(-1) == targets.view(-1)).float().mean().item()
        line += f" | accuracy {correct:.4f}"
    if spec.task == "classification" and count <= 16:
        line += f" | predicted classes {outputs['prediction'].long().view(-1).tolist()}"
    print(line)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@user_errors_exit
def _main(cfg: DictConfig) -> Any:
    return predict(cfg)


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
