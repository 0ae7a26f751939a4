"""Tests for `python -m ecomgpt_jax.compare`: table, JSON, partial overlap and bad input."""

import json
import subprocess
import sys

import pytest
from task_folders import write_task

from ecomgpt_jax import compare
from ecomgpt_jax.ecominstruct import predictions, scoring

CLS = "EN-Shop-CLS-topic"
GEN = "ZH-Shop-Generate-title"
N = 30


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    write_task(
        root,
        CLS,
        {
            "defi": "topic",
            "test_prompt": {"instruction": "{sentences} {label_set}"},
            "label_set": {"k": ["Food", "Price"]},
            "label_key": "k",
        },
        [{"sentences": f"s{i}", "labels": {"k": ["Food"]}} for i in range(N)],
    )
    write_task(
        root,
        GEN,
        {"defi": "title", "test_prompt": {"instruction": "{sentences}"}},
        [{"sentences": f"x{i}", "spans": [{"term": "红色T恤"}]} for i in range(N)],
    )
    return root


def write_predictions(path, right: int, tasks=(CLS, GEN), indices=range(N)):
    """JSON Lines predictions, right on the first `right` examples of each task."""
    answers = {CLS: ("Food", "Price"), GEN: ("红色T恤", "蓝色")}
    rows = [
        {"task": t, "index": i, "prediction": answers[t][0 if i < right else 1]}
        for t in tasks
        for i in indices
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_table_and_json(tmp_path, data_dir, capsys):
    base = write_predictions(tmp_path / "a.jsonl", right=10)
    cand = write_predictions(tmp_path / "b.jsonl", right=25)
    out = tmp_path / "diff.json"
    argv = ["--data_dir", str(data_dir), "--baseline", str(base), "--candidate", str(cand)]
    assert compare.main([*argv, "--samples", "500", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == (
        "candidate - baseline, x100, with 95% paired-bootstrap intervals "
        "(500 replicates, seed 0); * the interval excludes 0"
    )
    assert lines[1].split() == ["task", "n", *scoring.SCORE_KEYS]
    cls_row = lines[3]
    assert cls_row.split()[:3] == [CLS, "30", "+50.00"]  # accuracy 10/30 -> 25/30
    assert cls_row.endswith("]*")
    assert [line.split()[0] for line in lines[-3:]] == ["average", "baseline", "candidate"]

    got = json.loads(out.read_text("utf-8"))
    assert got["settings"] == {
        "baseline": str(base),
        "candidate": str(cand),
        "samples": 500,
        "seed": 0,
        "confidence": 0.95,
    }
    micro = got[CLS]["micro-f1"]
    assert got[CLS]["n"] == N
    assert micro["baseline"] == pytest.approx(10 / 30) and micro["candidate"] == pytest.approx(
        25 / 30
    )
    assert micro["delta"] == pytest.approx(0.5)
    assert micro["low"] < 0.5 < micro["high"] and micro["low"] > 0 and micro["p_value"] < 0.01
    # The averages are the score CLI's averages of each side.
    for side, path in (("baseline", base), ("candidate", cand)):
        scores = scoring.score_predictions(data_dir, predictions.read_predictions(path))
        average = scoring.average_scores(scores)
        for k in scoring.SCORE_KEYS:
            assert got["average"][k][side] == pytest.approx(average[k])
    assert got["average"]["n"] == 2 * N


def test_keys_choose_the_columns(tmp_path, data_dir, capsys):
    base = write_predictions(tmp_path / "a.jsonl", right=10)
    argv = ["--data_dir", str(data_dir), "--baseline", str(base), "--candidate", str(base)]
    assert compare.main([*argv, "--samples", "20", "--keys", "micro-f1,rouge-l-f1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["task", "n", "micro-f1", "rouge-l-f1"]
    assert lines[3].split() == [
        CLS,
        "30",
        "+0.00",
        "[+0.00,",
        "+0.00]",
        "+0.00",
        "[+0.00,",
        "+0.00]",
    ]
    with pytest.raises(SystemExit) as e:
        compare.main([*argv, "--keys", "rouge,micro-f1"])
    assert e.value.code == 2
    assert "argument --keys: unknown score rouge; choose from rouge-l-f1" in capsys.readouterr().err


def test_compares_the_examples_both_sides_predicted(tmp_path, data_dir, capsys):
    base = write_predictions(tmp_path / "a.jsonl", right=10)
    cand = write_predictions(tmp_path / "b.jsonl", right=25, tasks=(CLS,), indices=range(20))
    argv = ["--data_dir", str(data_dir), "--baseline", str(base), "--candidate", str(cand)]
    out = tmp_path / "diff.json"
    assert compare.main([*argv, "--samples", "50", "--output", str(out)]) == 0
    assert capsys.readouterr().err == (
        f"warning: tasks predicted on one side only, left out: {GEN}\n"
        f"warning: {CLS}: compared on the 20 examples both predicted (baseline 30, candidate 20)\n"
    )
    got = json.loads(out.read_text("utf-8"))
    assert list(got) == ["settings", CLS, "average"] and got[CLS]["n"] == 20
    assert got[CLS]["micro-f1"]["baseline"] == pytest.approx(10 / 20)
    assert got[CLS]["micro-f1"]["candidate"] == pytest.approx(1.0)


def test_bad_input_is_one_line(tmp_path, data_dir, capsys):
    base = write_predictions(tmp_path / "a.jsonl", right=10, tasks=(CLS,))
    other = write_predictions(tmp_path / "b.jsonl", right=10, tasks=(GEN,))
    argv = ["--data_dir", str(data_dir), "--baseline", str(base)]
    assert compare.main([*argv, "--candidate", str(other)]) == 2
    assert capsys.readouterr().err == (
        f"error: {other}: no example is predicted on both sides "
        f"(baseline: {CLS}; candidate: {GEN})\n"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "EN-Shop-CLS-topic", "index": 0, "prediction": "x"}\n{"task": 1}\n')
    assert compare.main([*argv, "--candidate", str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {bad}:2: field 'task' missing or not a string\n"
    assert compare.main([*argv, "--candidate", str(base), "--output", str(base)]) == 2
    assert "would overwrite what this command reads" in capsys.readouterr().err
    assert compare.main([*argv, "--candidate", str(base), "--samples", "0"]) == 2
    assert capsys.readouterr().err == "error: samples must be at least 1, got 0\n"
    assert compare.main([*argv, "--candidate", str(base), "--seed", "-1"]) == 2
    assert capsys.readouterr().err == "error: seed must be 0 or more, got -1\n"


def test_a_ctrl_c_is_one_line_and_exit_130(tmp_path, data_dir, capsys, monkeypatch):
    """During the bootstrap (seconds on the real data): not a trace from inside numpy."""
    base = write_predictions(tmp_path / "a.jsonl", right=10, tasks=(CLS,))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare.significance, "paired_bootstrap", interrupted)
    argv = ["--data_dir", str(data_dir), "--baseline", str(base), "--candidate", str(base)]
    assert compare.main(argv) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_task_of_one_example_has_no_interval(tmp_path, data_dir, capsys):
    """Every draw of one example is the data itself: a zero-width interval would look
    certain."""
    base = write_predictions(tmp_path / "a.jsonl", right=0, tasks=(CLS,), indices=[0])
    cand = write_predictions(tmp_path / "b.jsonl", right=1, tasks=(CLS,), indices=[0])
    argv = ["--data_dir", str(data_dir), "--baseline", str(base), "--candidate", str(cand)]
    assert compare.main([*argv, "--samples", "50", "--keys", "micro-f1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split() == [CLS, "1", "+100.00", "[n/a]"]
    assert lines[5].split() == ["average", "1", "tasks", "+100.00", "[n/a]"]


def test_runs_as_a_module(tmp_path, data_dir):
    base = write_predictions(tmp_path / "a.jsonl", right=10)
    cand = write_predictions(tmp_path / "b.jsonl", right=12)
    argv = ["--data_dir", str(data_dir), "--baseline", str(base), "--candidate", str(cand)]
    run = subprocess.run(
        [sys.executable, "-m", "ecomgpt_jax.compare", *argv, "--samples", "50"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[3].startswith(CLS)
