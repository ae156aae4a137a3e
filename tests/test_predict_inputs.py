"""predict reads what spreadsheets write (a UTF-8 byte-order mark, a header or none), refuses rows
that are not finite numbers and files that are not text in one line, takes a batch size, and
reports progress on long jobs."""

from __future__ import annotations

import csv
import os
import shutil
import stat
from pathlib import Path

import pytest

from experiments import predict as predict_module

from reliability_helpers import call_cli


@pytest.fixture(scope="module")
def xor_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("xor") / "run"
    code, _, err = call_cli(
        "train", "experiment=xor", "trainer.max_epochs=2", "logger=none", f"hydra.run.dir={run_dir}"
    )
    assert code == 0, err
    return run_dir / "checkpoints" / "best.ckpt"


def _predict(ckpt: Path, inputs: Path, output: Path, *extra: str) -> list[dict[str, str]]:
    code, out, err = call_cli("predict", f"ckpt_path={ckpt}", f"inputs={inputs}", f"output={output}", *extra)
    assert code == 0, err
    with open(output) as handle:
        return list(csv.DictReader(handle))


ROWS = "0,0\n0,1\n1,0\n1,1\n"


@pytest.mark.parametrize("header", ["", "a,b\n"], ids=["no-header", "header"])
def test_a_byte_order_mark_shifts_no_row(header: str, xor_ckpt: Path, tmp_path: Path) -> None:
    plain, excel = tmp_path / "plain.csv", tmp_path / "excel.csv"
    plain.write_text(header + ROWS)
    excel.write_bytes(b"\xef\xbb\xbf" + (header + ROWS).replace("\n", "\r\n").encode())  # Excel's "CSV UTF-8"
    expected = _predict(xor_ckpt, plain, tmp_path / "p1.csv")
    got = _predict(xor_ckpt, excel, tmp_path / "p2.csv")
    assert len(got) == 4
    assert got == expected
    assert [(r["input_0"], r["input_1"]) for r in got] == [
        ("0.0", "0.0"),
        ("0.0", "1.0"),
        ("1.0", "0.0"),
        ("1.0", "1.0"),
    ]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"a,b\n0,1\n1,NaN\n", "data row 2 (line 3) holds a value that is not a finite number: ['1', 'NaN']"),
        (b"0,1\n1,1\n-inf,0\n", "data row 3 (line 3) holds a value that is not a finite"),
        (b"0,1\n" * 70000 + b"1,infinity\n", "data row 70001 (line 70001)"),  # in the second block
        (
            b"\xff\xfea\x00,\x00b\x00\n\x00",
            "is not a CSV text file (it holds byte 0xff",
        ),  # UTF-16, Excel's "Unicode text"
        (b"0,1\n\x89PNG\r\n\x1a\n\x00\x00", "is not a CSV text file"),
    ],
    ids=["nan", "-inf", "inf-late", "utf-16", "binary"],
)
def test_bad_values_and_files_are_refused_in_one_line(
    content: bytes, words: str, xor_ckpt: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.csv"
    inputs.write_bytes(content)
    code, out, err = call_cli("predict", f"ckpt_path={xor_ckpt}", f"inputs={inputs}", f"output={tmp_path}/p.csv")
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: {inputs}"), err
    assert words in lines[0]
    assert not (tmp_path / "p.csv").exists()


def test_the_batch_size_changes_nothing_but_the_speed(xor_ckpt: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.csv"
    inputs.write_text("".join(f"{i % 2},{(i // 2) % 2}\n" for i in range(1000)))
    one = _predict(xor_ckpt, inputs, tmp_path / "p1.csv", "batch_size=1")
    many = _predict(xor_ckpt, inputs, tmp_path / "p2.csv", "batch_size=300")
    assert len(one) == len(many) == 1000
    assert [r["prediction"] for r in one] == [r["prediction"] for r in many]
    for a, b in zip(one, many):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-6)


def test_long_jobs_report_their_progress(xor_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every tick is due when the interval is 0: the lines a job longer than the interval prints.
    monkeypatch.setattr(predict_module, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(predict_module, "BLOCK_ROWS", 100)
    inputs = tmp_path / "inputs.csv"
    inputs.write_text("a,b\n" + "0,1\n" * 250)
    code, out, err = call_cli(
        "predict", f"ckpt_path={xor_ckpt}", f"inputs={inputs}", f"output={tmp_path}/p.csv", "batch_size=100"
    )
    assert code == 0, err
    assert "reading inputs.csv: rows: 200" in out
    assert "predicting: rows: 100 of 250 (40%)" in out and "predicting: rows: 250 of 250 (100%)" in out
    assert "writing p.csv: rows: 250 of 250 (100%)" in out


def test_short_jobs_stay_quiet(xor_ckpt: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.csv"
    inputs.write_text(ROWS)
    code, out, err = call_cli("predict", f"ckpt_path={xor_ckpt}", f"inputs={inputs}", f"output={tmp_path}/p.csv")
    assert code == 0, err
    assert "rows:" not in out


@pytest.mark.slow
def test_three_million_rows_take_seconds_not_minutes(xor_ckpt: Path, tmp_path: Path) -> None:
    import time

    import numpy as np

    inputs = tmp_path / "big.csv"
    values = np.random.default_rng(0).integers(0, 2, size=(3_000_000, 2))
    # The bytes np.savetxt(inputs, values, delimiter=",", fmt="%d", header="a,b", comments="") writes,
    # in a fraction of a second instead of 8 (each row is one of four 4-byte lines).
    lines = np.array([b"0,0\n", b"0,1\n", b"1,0\n", b"1,1\n"], dtype="S4")
    inputs.write_bytes(b"a,b\n" + lines[values[:, 0] * 2 + values[:, 1]].tobytes())
    started = time.perf_counter()
    code, out, err = call_cli(
        "predict", f"ckpt_path={xor_ckpt}", f"inputs={inputs}", f"output={tmp_path}/p.csv", "show=0"
    )
    seconds = time.perf_counter() - started
    assert code == 0, err
    assert "3000000 predictions" in out
    assert seconds < 120  # about 20 s on 2 shared CPU cores (8 minutes before)
    assert "rows:" in out  # it said where it was on the way


# output= (issue 23, class 2): predict writes a new file or replaces a predictions CSV of the same
# columns; never the inputs, a run's own files or folders, a link, a folder, a pipe or a device.
def _targets(tmp_path: Path, run: Path, other: Path, inputs: Path) -> dict[str, tuple[Path, str]]:
    """name -> (output=, words of its one line), each made here."""
    fifo, folder, link, device = tmp_path / "pipe", tmp_path / "folder", tmp_path / "link.csv", tmp_path / "null"
    os.mkfifo(fifo)
    folder.mkdir()
    (tmp_path / "victim.csv").write_text("keep me\n")
    link.symlink_to(tmp_path / "victim.csv")
    user_csv = tmp_path / "mine.csv"
    user_csv.write_text("a,b\n1,2\n")
    targets = {
        "best.ckpt": (run / "checkpoints" / "best.ckpt", "a run's own folder"),
        "new file in checkpoints/": (run / "checkpoints" / "new.csv", "a run's own folder"),
        "config.yaml": (run / "config.yaml", "is a run's own file (config.yaml)"),
        "metrics.json": (run / "metrics.json", "is a run's own file (metrics.json)"),
        "history.csv": (run / "history.csv", "is a run's own file (history.csv)"),
        ".hydra/config.yaml": (run / ".hydra" / "config.yaml", "a run's own folder"),
        "other run's last.ckpt": (other / "checkpoints" / "last.ckpt", "a run's own folder"),
        "the inputs file": (inputs, "is the inputs= file"),
        "a FIFO": (fifo, "is a named pipe, not a file"),
        "a folder": (folder, "is a folder, not a file"),
        "a symbolic link": (link, "is a symbolic link, not a file"),
        "a binary file": (tmp_path / "photo.png", "is not a predictions CSV"),
        "a CSV of other columns": (user_csv, "holds other columns (a,b) than predictions of this model"),
    }
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    if os.geteuid() == 0:  # a character device like /dev/null, made in the temp folder
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets["a device"] = (device, "is a device, not a file")
    return targets


def _state(path: Path) -> tuple[int, bytes | None]:
    mode = os.lstat(path).st_mode
    return stat.S_IFMT(mode), path.read_bytes() if stat.S_ISREG(mode) else None


def test_predict_writes_only_new_files_or_predictions(xor_ckpt: Path, tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(xor_ckpt.parent.parent, run)
    shutil.copytree(xor_ckpt.parent.parent, other)
    inputs = tmp_path / "inputs.csv"
    inputs.write_text(ROWS)
    for name, (target, words) in _targets(tmp_path, run, other, inputs).items():
        existed = os.path.lexists(target)
        before = {p: _state(p) for p in [target, *run.rglob("*"), *other.rglob("*"), inputs] if os.path.lexists(p)}
        code, out, err = call_cli(
            "predict", f"ckpt_path={run}/checkpoints/best.ckpt", f"inputs={inputs}", f"output={target}"
        )
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: output={target}"), (name, err)
        assert words in lines[0], (name, lines[0])
        assert {p: _state(p) for p in before} == before and os.path.lexists(target) == existed, name
    # what predict wrote, it replaces; the default goes beside the run's checkpoints folder
    for _ in range(2):
        code, out, err = call_cli("predict", f"ckpt_path={run}/checkpoints/best.ckpt", "show=0")
        assert code == 0, err
    assert (run / "predictions.csv").read_text().splitlines()[0] == "input_0,input_1,target,probability,prediction"


@pytest.mark.parametrize("show", ["abc", "-1", "true", "1.5"])
def test_show_is_a_whole_number(show: str, xor_ckpt: Path, tmp_path: Path) -> None:
    code, out, err = call_cli("predict", f"ckpt_path={xor_ckpt}", f"output={tmp_path}/p.csv", f"show={show}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: show="), err
    assert "must be a whole number >= 0" in err and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("kind", ["named pipe", "folder"])
def test_inputs_are_a_regular_file(kind: str, xor_ckpt: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "stream.csv"
    os.mkfifo(inputs) if kind == "named pipe" else inputs.mkdir()
    code, _, err = call_cli("predict", f"ckpt_path={xor_ckpt}", f"inputs={inputs}", f"output={tmp_path}/p.csv")
    assert code == 2 and err.strip() == (
        f"error: inputs={inputs} is a {kind}, not a file; pass inputs=<CSV file with one sample per row>"
    )


def test_a_checkpoint_reached_through_a_link_writes_beside_the_link(xor_ckpt: Path, tmp_path: Path) -> None:
    run = tmp_path / "other_run"
    shutil.copytree(xor_ckpt.parent.parent, run)
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "best.ckpt").symlink_to(run / "checkpoints" / "best.ckpt")
    code, _, err = call_cli("predict", f"ckpt_path={mine / 'best.ckpt'}", "show=0")
    assert code == 0, err
    assert (mine / "predictions.csv").is_file() and not (run / "predictions.csv").exists()
