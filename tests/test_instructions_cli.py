"""Tests for the CLI `python -m ecomgpt_jax.instructions` (ecomgpt_jax/instructions.py):
prompts and answers exported as JSON Lines, one-line errors."""

import json
import pathlib
import subprocess
import sys

from task_folders import cls_task, make_task

from ecomgpt_jax.ecominstruct import instructions

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ecomgpt_jax.instructions", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_cli(tmp_path):
    task, labels = cls_task(tmp_path / "data", n_rows=3)
    out = tmp_path / "out.jsonl"
    proc = run_cli(
        "--data_dir", str(tmp_path / "data"), "--split", "test", "--output", str(out), "--seed", "3"
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expect = instructions.task_instructions(task, "test", seed=3)
    assert rows == [
        {"task": i.task, "index": i.index, "inputs": i.prompt, "targets": i.answer} for i in expect
    ]

    bad = tmp_path / "bad"
    make_task(
        bad,
        "EN-Shop-Extract-x",
        {"defi": "d", "test_prompt": {"instruction": "{sentences}"}},
        [{"spans": []}],
    )
    proc = run_cli("--data_dir", str(bad), "--output", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}/Shop/tasks/EN-Shop-Extract-x/test.json:1: missing field 'sentences' "
        "(expected a string or a list of strings)"
    ]


def test_cli_split_errors(tmp_path, capsys):
    """A mistyped split, or one no chosen task has, is an error, not an empty file."""
    from ecomgpt_jax import instructions as cli

    cls_task(tmp_path / "data", n_rows=2)  # test split only
    out = tmp_path / "out.jsonl"
    argv = ["--data_dir", str(tmp_path / "data"), "--output", str(out)]
    assert cli.main([*argv, "--split", "tset"]) == 2
    assert capsys.readouterr().err == "error: --split 'tset': unknown split (use train or test)\n"
    assert cli.main([*argv, "--split", "train"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'data'}: no task has a 'train' split (no train.json)\n"
    )
    assert cli.main([*argv, "--split", "train", "--tasks", "EN-Shop-CLS-cat"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'data'}: none of the chosen tasks has a 'train' split "
        "(no train.json)\n"
    )
    assert not out.exists()
    assert cli.main([*argv, "--split", "test"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    # A task may be named as SeqIO names it, as score and the mixtures take it.
    out.unlink()
    assert cli.main([*argv, "--split", "test", "--tasks", "ecom:EN:Shop:CLS:cat"]) == 0
    assert {json.loads(x)["task"] for x in out.read_text(encoding="utf-8").splitlines()} == {
        "EN-Shop-CLS-cat"
    }


def test_cli_checks_output_and_data_root_first(tmp_path, capsys):
    """--output problems name --output (not "[Errno 21] Is a directory"); a data root one
    level too high names the layout and the level to point at (not "no task has a 'test'
    split")."""
    from ecomgpt_jax import instructions as cli

    cls_task(tmp_path / "up" / "data", n_rows=2)
    argv = ["--data_dir", str(tmp_path / "up" / "data"), "--output"]
    assert cli.main([*argv, str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --output {tmp_path}: is a folder; give a file name\n"
    missing = tmp_path / "nodir" / "out.jsonl"
    assert cli.main([*argv, str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"error: --output {missing}: folder {missing.parent} does not exist\n"
    )
    out = tmp_path / "out.jsonl"
    assert cli.main(["--data_dir", str(tmp_path / "up"), "--output", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'up'}: no task folders found; expected "
        "<root>/<Dataset>/tasks/<LANG>-<Dataset>-<TYPE>-<name>/meta-info.json "
        f"(task folders are one level down: point at {tmp_path / 'up' / 'data'})\n"
    )
    assert not out.exists()


def test_cli_help_keeps_the_usage_line():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert (
        "    python -m ecomgpt_jax.instructions --data_dir DIR --split test --output FILE.jsonl "
        "[--seed 0]" in proc.stdout.splitlines()
    )


def test_cli_never_leaves_a_half_written_output_nor_writes_over_its_data(
    tmp_path, capsys, monkeypatch
):
    from ecomgpt_jax import instructions as cli

    task, _ = cls_task(tmp_path / "data", n_rows=4)
    data_file = task.split_path("test")
    before = data_file.read_bytes()
    argv = ["--data_dir", str(tmp_path / "data"), "--output"]
    assert cli.main([*argv, str(data_file)]) == 2
    assert capsys.readouterr().err == (
        f"error: --output {data_file}: would overwrite what this command reads ({data_file})\n"
    )
    assert data_file.read_bytes() == before
    # A write failing midway (a full disk) keeps the previous output whole.
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    rows = []

    def failing_dumps(row, **kwargs):
        rows.append(row)
        if len(rows) == 3:
            raise OSError(28, "No space left on device")
        return json.dumps(row, **kwargs)

    monkeypatch.setattr(cli.json, "dumps", failing_dumps)
    assert cli.main([*argv, str(out)]) == 2
    assert capsys.readouterr().err == "error: [Errno 28] No space left on device\n"
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out.jsonl"]
