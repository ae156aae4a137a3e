"""The catalogue of bad inputs: each is refused with one line on stderr that names the problem and
the fix, a non-zero exit code, no traceback, and nothing left that poses as a finished result.

Most cases run in this process through ``call_cli`` (``run_cli`` around the Hydra main with
``sys.argv`` as typed: what the console script runs); the ones marked ``cli`` start the real
command in a subprocess, to show the two agree. Placeholders in the arguments: ``{tmp}`` is the
case's own folder, ``{run}`` a finished XOR run, ``{ckpt}`` its best checkpoint.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import MNIST_DIR
from reliability_helpers import call_cli, completed_results, run

# (id, entry point, arguments, words the error line must contain, through a subprocess)
CASES = [
    # unknown options and misspelt keys
    ("unknown-model", "train", ["model=mpl"], ["unknown model 'mpl'", "did you mean 'mlp'"], True),
    ("unknown-experiment", "train", ["experiment=xorr"], ["unknown experiment 'xorr'", "did you mean 'xor'"], False),
    ("unknown-trainer", "train", ["trainer=tpu"], ["unknown trainer 'tpu'", "choose one of"], False),
    ("misspelt-top-key", "train", ["sed=1"], ["unknown key 'sed'", "did you mean 'seed'"], False),
    ("misspelt-nested-key", "train", ["optimizer.lrr=0.1"], ["unknown key 'optimizer.lrr'", "optimizer.lr"], False),
    ("misspelt-model-option", "train", ["+model.hiden=[4]"], ["model.hiden is not an option", "'hidden'"], False),
    ("override-syntax", "train", ["model.hidden=[4"], ["'[4'", "override_grammar"], False),
    ("missing-required", "evaluate", [], ["ckpt_path is required", "ckpt_path="], False),
    # wrong types and ranges
    ("epochs-not-int", "train", ["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "expected int"], False),
    ("hidden-not-list", "train", ["model.hidden=abc"], ["model.hidden='abc'", "expected list"], False),
    ("seed-not-int", "train", ["seed=abc"], ["seed='abc'", "expected int"], False),
    ("batch-size-float", "train", ["data.batch_size=2.5"], ["data.batch_size=2.5", "expected int"], False),
    (
        "negative-lr",
        "train",
        ["optimizer.lr=-1"],
        ["optimizer.lr=-1 is not valid", "learning rate", "fix optimizer.lr"],
        False,
    ),
    ("nan-lr", "train", ["optimizer.lr=nan"], ["optimizer.lr=nan is not a finite number", "fix optimizer.lr"], False),
    # torch takes lr=inf: the run trained NaN weights, found at its first step
    ("inf-lr", "train", ["optimizer.lr=inf"], ["optimizer.lr=inf is not a finite number", "fix optimizer.lr"], False),
    ("zero-batch-size", "train", ["data.batch_size=0"], ["batch_size must be a positive integer", "got 0"], False),
    ("negative-epochs", "train", ["trainer.max_epochs=-5"], ["max_epochs", "-5"], False),
    ("zero-epochs", "train", ["trainer.max_epochs=0"], ["trainer.max_epochs=0 trains nothing", "positive"], False),
    ("endless-epochs", "train", ["trainer.max_epochs=-1"], ["would train forever", "+trainer.max_steps=N"], False),
    ("seed-too-large", "train", ["seed=99999999999"], ["seed=99999999999 is out of range", "0 to 4294967295"], False),
    ("seed-negative", "train", ["seed=-1"], ["seed=-1 is out of range"], False),
    (
        "dropout-out-of-range",
        "train",
        ["model.dropout=1.5"],
        ["model.dropout=1.5 is not valid for MLP", "dropout must be in [0, 1)", "fix model.dropout"],
        False,
    ),
    (
        "unknown-added-key",
        "train",
        ["+foo=bar"],
        ["unknown key 'foo'", "+foo=bar adds a key that nothing reads"],
        False,
    ),
    ("bad-precision", "train", ["trainer.precision=13"], ["trainer.precision=13", "bf16-mixed"], False),
    ("bad-monitor-mode", "train", ["monitor_mode=maximum"], ["monitor_mode='maximum' must be min or max"], False),
    (
        "negative-checkpoint-steps",
        "train",
        ["checkpoint_every_n_steps=-1"],
        ["checkpoint_every_n_steps=-1", ">= 0"],
        False,
    ),
    (
        "checkpoint-steps-word",
        "train",
        ["checkpoint_every_n_steps=often"],
        ["checkpoint_every_n_steps='often' must be an integer >= 0"],
        False,
    ),
    # a size this machine cannot allocate: one line, not torch's allocator traceback
    ("model-too-large", "train", ["model.hidden=[100000000000]"], ["out of memory", "model.hidden"], False),
    (
        "max-time-word",
        "train",
        ["+trainer.max_time=yesterday"],
        ["trainer.max_time='yesterday' is not a duration", "DD:HH:MM:SS"],
        False,
    ),
    ("max-time-negative", "train", ["+trainer.max_time={{minutes:-1}}"], ["is not a duration"], False),
    ("gpu-without-gpu", "train", ["trainer=gpu"], ["gpu", "found"], False),
    # a monitored metric that the task does not log is refused before training
    (
        "misspelt-monitor",
        "train",
        ["monitor=val/accuracy", "trainer.max_epochs=2"],
        ["monitor=val/accuracy is not logged by this task", "did you mean 'val/acc'", "val/loss"],
        True,
    ),
    ("test-monitor", "train", ["monitor=test/acc"], ["monitor=test/acc is logged only after training"], False),
    # values with no meaning (issue 23): a bool for a number, zero or negative counts and intervals
    ("batch-size-true", "train", ["data.batch_size=true"], ["data.batch_size=True has the wrong type"], False),
    ("hidden-bool", "train", ["model.hidden=[true]"], ["model.hidden=[True]", "expected list of int"], False),
    (
        "check-val-zero",
        "train",
        ["trainer.check_val_every_n_epoch=0"],
        ["trainer.check_val_every_n_epoch=0 must be a positive integer"],
        False,
    ),
    (
        "accumulate-zero",
        "train",
        ["trainer.accumulate_grad_batches=0"],
        ["trainer.accumulate_grad_batches=0 must be a positive integer"],
        False,
    ),
    ("log-every-zero", "train", ["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps=0 must be"], False),
    (
        "clip-negative",
        "train",
        ["trainer.gradient_clip_val=-1"],
        ["gradient_clip_val=-1 must be a finite number >= 0"],
        False,
    ),
    ("clip-infinite", "train", ["trainer.gradient_clip_val=inf"], ["gradient_clip_val=inf must be a finite"], False),
    ("val-interval-zero", "train", ["+trainer.val_check_interval=0"], ["val_check_interval=0 must be positive"], False),
    ("min-epochs-negative", "train", ["+trainer.min_epochs=-3"], ["trainer.min_epochs=-3 must be >= 0"], False),
    ("sanity-steps-negative", "train", ["+trainer.num_sanity_val_steps=-5"], ["num_sanity_val_steps=-5"], False),
    (
        "patience-negative",
        "train",
        ["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=-1"],
        ["callbacks.early_stopping.patience=-1 must be >= 0"],
        False,
    ),
    (
        "history-interval-negative",
        "train",
        ["callbacks.history.min_write_interval=-1"],
        ["min_write_interval must be >= 0"],
        False,
    ),
    (
        "precision-name",
        "train",
        ["trainer.precision=bf32"],
        ["trainer.precision='bf32' is not one of", "bf16-mixed"],
        False,
    ),
    # settings under which the monitor is never logged
    (
        "no-validation",
        "train",
        ["+trainer.limit_val_batches=0"],
        ["monitor=val/loss is never logged", "limit_val_batches=0 runs no validation"],
        False,
    ),
    (
        "validation-after-the-last-epoch",
        "train",
        ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=5"],
        ["monitor=val/loss is never logged", "none of the trainer.max_epochs=3 epochs"],
        False,
    ),
    ("zero-horizon", "train", ["experiment=sine_lstm", "data.horizon=0"], ["horizon", "must be positive"], False),
    (
        "window-longer-than-series",
        "train",
        ["experiment=sine_lstm", "data.input_length=5000"],
        ["fewer than input_length + horizon", "shorter input_length"],
        False,
    ),
    # model and data that cannot fit
    (
        "cnn-on-xor",
        "train",
        ["model=cnn"],
        ["model CNN does not fit data XORDataModule", "model=mlp"],
        True,
    ),
    # missing, corrupt and incompatible checkpoints
    (
        "evaluate-missing-ckpt",
        "evaluate",
        ["ckpt_path={tmp}/nothing.ckpt"],
        ["checkpoint not found", "ckpt_path="],
        False,
    ),
    (
        "evaluate-corrupt-ckpt",
        "evaluate",
        ["ckpt_path={tmp}/run/checkpoints/corrupt.ckpt"],
        ["cannot read checkpoint", "corrupt"],
        True,
    ),
    (
        "evaluate-not-lightning",
        "evaluate",
        ["ckpt_path={tmp}/run/checkpoints/plain.ckpt"],
        ["not a Lightning checkpoint"],
        False,
    ),
    (
        "evaluate-ckpt-without-config",
        "evaluate",
        ["ckpt_path={tmp}/old.ckpt"],
        ["carries no config", "config=<run dir>/config.yaml"],
        False,
    ),
    (
        "evaluate-incompatible",
        "evaluate",
        ["ckpt_path={tmp}/run/checkpoints/best.ckpt"],
        ["does not fit the model"],
        False,
    ),
    ("resume-missing-ckpt", "train", ["ckpt_path={tmp}/nothing.ckpt"], ["checkpoint not found"], False),
    (
        "resume-corrupt-ckpt",
        "train",
        ["ckpt_path={tmp}/run/checkpoints/corrupt.ckpt"],
        ["cannot read checkpoint"],
        False,
    ),
    (
        "resume-incompatible",
        "train",
        ["resume={run}", "model.hidden=[16]", "resume_with_changes=true"],  # told to go ahead with its changes
        ["does not fit the model of this config"],
        False,
    ),
    ("resume-nothing", "train", ["resume=latest"], ["resume=latest: no run", "without resume="], True),
    ("resume-not-a-run", "train", ["resume={tmp}"], ["no checkpoints/last.ckpt in that directory"], False),
    ("resume-and-ckpt-path", "train", ["resume={run}", "ckpt_path={ckpt}"], ["not both"], False),
    (
        "resume-weights-only-ckpt",
        "train",
        ["ckpt_path={tmp}/weights_only.ckpt"],
        ["holds weights but no training state", "optimizer_states, loops missing"],
        False,
    ),
    (
        "resume-lightning-1.5-ckpt",
        "train",
        ["ckpt_path={tmp}/lightning_1_5.ckpt"],
        ["written by Lightning 1.5.10, before 1.6", "evaluate and predict can use its weights"],
        False,
    ),
    # bad input files
    (
        "predict-missing-inputs",
        "predict",
        ["ckpt_path={ckpt}", "inputs={tmp}/none.csv"],
        ["inputs file not found"],
        False,
    ),
    (
        "predict-wrong-columns",
        "predict",
        ["ckpt_path={ckpt}", "inputs={tmp}/three.csv"],
        ["should hold 2 numbers"],
        True,
    ),
    (
        "predict-nan-row",
        "predict",
        ["ckpt_path={ckpt}", "inputs={tmp}/nan.csv"],
        ["data row 2 (line 3)", "not a finite number", "fix or drop that row"],
        False,
    ),
    (
        "predict-infinite-row",
        "predict",
        ["ckpt_path={ckpt}", "inputs={tmp}/inf.csv"],
        ["data row 1 (line 1)", "not a finite"],
        False,
    ),
    (
        "predict-binary-file",
        "predict",
        ["ckpt_path={ckpt}", "inputs={tmp}/binary.csv"],
        ["is not a CSV text file", "save it as CSV (UTF-8)"],
        False,
    ),
    (
        "predict-show-negative",
        "predict",
        ["ckpt_path={ckpt}", "show=-1"],
        ["show=-1 must be a whole number >= 0"],
        False,
    ),
    (
        "predict-show-text",
        "predict",
        ["ckpt_path={ckpt}", "show=abc"],
        ["show='abc' must be a whole number >= 0"],
        False,
    ),
    (
        "predict-inputs-fifo",
        "predict",
        ["ckpt_path={ckpt}", "inputs={tmp}/fifo.csv"],
        ["is a named pipe, not a file"],
        False,
    ),
    ("predict-inputs-folder", "predict", ["ckpt_path={ckpt}", "inputs={tmp}"], ["is a folder"], False),
    (
        "evaluate-empty-config",
        "evaluate",
        ["ckpt_path={tmp}/old.ckpt", "config={tmp}/empty.yaml"],
        ["empty.yaml does not hold a run's config"],
        False,
    ),
    (
        "evaluate-trust-not-importable",
        "evaluate",
        ["ckpt_path={tmp}/own_parts.ckpt", "trust=my_parts"],
        ["'my_parts.Model' cannot be imported", "PYTHONPATH"],
        False,
    ),
    (
        "resume-damaged-random-state",
        "train",
        ["ckpt_path={tmp}/bad_state.ckpt"],
        ["holds a damaged resume_state", "that a run of this project wrote"],
        False,
    ),
    (
        "predict-bad-batch-size",
        "predict",
        ["ckpt_path={ckpt}", "batch_size=0"],
        ["batch_size=0", "positive integer"],
        False,
    ),
    # damaged data files (found when the data module reads them, once the trainer has started:
    # on the command line Lightning's start-up lines come first, the error line is the last)
    ("mnist-missing-file", "train", ["experiment=mnist_mlp", "data.data_dir={mnist_missing}"], ["is missing"], False),
    (
        "mnist-truncated-gzip",
        "train",
        ["experiment=mnist_mlp", "data.data_dir={mnist_truncated}"],
        ["corrupt or truncated"],
        False,
    ),
    ("mnist-wrong-magic", "train", ["experiment=mnist_mlp", "data.data_dir={mnist_magic}"], ["magic number"], False),
    ("mnist-no-items", "train", ["experiment=mnist_mlp", "data.data_dir={mnist_empty}"], ["holds 0 items"], False),
    (
        "mnist-short-data",
        "train",
        ["experiment=mnist_mlp", "data.data_dir={mnist_short}"],
        ["train-labels-idx1-ubyte.gz has", "data bytes, expected"],
        False,
    ),
    (
        "mnist-label-200",
        "train",
        ["experiment=mnist_mlp", "data.data_dir={mnist_label200}"],
        ["train-labels-idx1-ubyte.gz holds label 200 at item 5", "replace it"],
        False,
    ),
    # a data file's name holding a folder or a named pipe: neither read (a pipe would block) nor downloaded over
    (
        "mnist-labels-a-folder",
        "train",
        ["experiment=mnist_mlp", "data.data_dir={mnist_folder}"],
        ["train-labels-idx1-ubyte.gz is a folder, not a data file"],
        False,
    ),
    (
        "mnist-labels-a-pipe",
        "train",
        ["experiment=mnist_mlp", "data.data_dir={mnist_pipe}"],
        ["train-labels-idx1-ubyte.gz is a named pipe, not a data file"],
        False,
    ),
    # an output directory that cannot be written
    ("unwritable-run-dir", "train", ["hydra.run.dir={tmp}/file/run"], ["cannot use", "hydra.run.dir="], True),
    (
        "unwritable-predictions",
        "predict",
        ["ckpt_path={ckpt}", "output={tmp}/file/p.csv"],
        ["cannot write", "output="],
        False,
    ),
]


def _prepare(tmp: Path, xor_run: Path) -> None:
    """The bad files the cases name, each in the case's own folder."""
    (tmp / "file").write_text("a file where a folder should be\n")
    (tmp / "three.csv").write_text("a,b,c\n1,2,3\n")
    (tmp / "nan.csv").write_text("a,b\n0,1\nnan,1\n1,1\n")
    (tmp / "inf.csv").write_text("1e39,0\n0,1\n")  # finite as a double, infinite as float32
    (tmp / "binary.csv").write_bytes((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()[:4096])
    os.mkfifo(tmp / "fifo.csv")
    (tmp / "empty.yaml").write_text("")
    best = torch.load(xor_run / "checkpoints" / "best.ckpt", weights_only=True)
    torch.save({k: v for k, v in best.items() if k != "config"}, tmp / "old.ckpt")  # before checkpoints held it
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    best["config"]["model"]["hidden"] = [5]  # a model of another size than the weights
    torch.save(best, run / "checkpoints" / "best.ckpt")
    good = (xor_run / "checkpoints" / "best.ckpt").read_bytes()
    (run / "checkpoints" / "corrupt.ckpt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "plain.ckpt")
    last = torch.load(xor_run / "checkpoints" / "last.ckpt", weights_only=True)
    # ModelCheckpoint(save_weights_only=True) keeps these four
    torch.save(
        {k: last[k] for k in ("epoch", "global_step", "pytorch-lightning_version", "state_dict")},
        tmp / "weights_only.ckpt",
    )
    # Lightning 1.5: loops of another layout, callbacks keyed by class name
    old = {
        **last,
        "pytorch-lightning_version": "1.5.10",
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
    }
    torch.save(old, tmp / "lightning_1_5.ckpt")
    damaged = {**last, "resume_state": {**last["resume_state"], "python": [1, 2]}}
    torch.save(damaged, tmp / "bad_state.ckpt")
    own = torch.load(xor_run / "checkpoints" / "best.ckpt", weights_only=True)
    own["config"]["model"]["_target_"] = "my_parts.Model"  # a package of one's own, not installed here
    torch.save(own, tmp / "own_parts.ckpt")


DAMAGE = {
    "mnist_missing": lambda p: p.unlink(),
    "mnist_truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "mnist_magic": lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(p.read_bytes())[4:])),
    # a valid header that counts 0 items, and no data
    "mnist_empty": lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:4] + bytes(4))),
    # a valid gzip whose labels stop 10 items short of what the header counts
    "mnist_short": lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10])),
    "mnist_folder": lambda p: (p.unlink(), p.mkdir()),
    "mnist_pipe": lambda p: (p.unlink(), os.mkfifo(p)),
    # item 5 of the training labels (after the 8-byte header) says 200
    "mnist_label200": lambda p: p.write_bytes(
        gzip.compress((lambda raw: raw[:13] + bytes([200]) + raw[14:])(gzip.decompress(p.read_bytes())))
    ),
}


def _damaged_mnist(tmp: Path, name: str) -> Path:
    """A copy of the shipped MNIST files whose training labels are damaged as ``name`` says."""
    folder = tmp / name
    shutil.copytree(MNIST_DIR, folder)
    DAMAGE[name](folder / "train-labels-idx1-ubyte.gz")
    return folder


def test_catalogue_has_at_least_20_cases() -> None:
    assert len(CASES) >= 20
    # A good share through the real command line: one of each kind of mistake (a config group, a
    # model that does not fit the data, a damaged checkpoint, resume, a predict input file, a run
    # folder that cannot be written); the rest in this process, through the same run_cli.
    assert sum(case[4] for case in CASES) >= 6


@pytest.mark.parametrize(("module", "args", "expected", "cli"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(
    module: str,
    args: list[str],
    expected: list[str],
    cli: bool,
    xor_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _prepare(tmp_path, xor_run)
    before = json.loads((xor_run / "metrics.json").read_text())
    damaged = {name: _damaged_mnist(tmp_path, name) for name in DAMAGE if any(f"{{{name}}}" in a for a in args)}
    argv = [a.format(tmp=tmp_path, run=xor_run, ckpt=xor_run / "checkpoints" / "best.ckpt", **damaged) for a in args]
    if module == "train" and not any(a.startswith(("hydra.run.dir=", "resume=")) for a in argv):
        argv.append(f"hydra.run.dir={tmp_path}/out")
    if module == "train" and not any(a.startswith("experiment=") for a in argv):
        argv.insert(0, "experiment=xor")  # small and fast, and what the file names and shapes above assume
    monkeypatch.chdir(tmp_path)  # resume=latest looks for outputs/ here
    if cli:
        result = run(module, *argv, cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        code, _, stderr = call_cli(module, *argv)

    lines = stderr.strip().splitlines()
    assert code != 0
    assert "Traceback" not in stderr
    if any(a.startswith("data.data_dir=") for a in argv):
        # found only once training runs, after Lightning's own lines ("GPU available: ...")
        lines = [line for line in lines if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for words in expected:
        assert words in lines[0], lines[0]
    assert completed_results(tmp_path) == []
    # a run the bad command named is left as it was
    assert json.loads((xor_run / "metrics.json").read_text()) == before


def test_an_unimportable_target_is_the_only_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hydra's locator logged three lines at ERROR ("Error getting object ... Are you sure that
    # module 'nosuch' is installed?") on stdout before the refusal: now the refusal is all there is.
    monkeypatch.chdir(tmp_path)
    code, out, err = call_cli("train", "experiment=xor", "model._target_=nosuch.Model", f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert out.strip() == ""
    assert err.strip().splitlines() == [
        "error: model._target_: cannot import 'nosuch.Model'; check the name, and that its package is installed "
        "or on PYTHONPATH"
    ]
