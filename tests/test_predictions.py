"""Tests for ecominstruct.predictions: reading prediction files and checking rows."""

import pytest
from task_folders import write_shop_tasks

from ecomgpt_jax.ecominstruct import predictions
from ecomgpt_jax.ecominstruct.reader import DataError


@pytest.fixture
def data_dir(tmp_path):
    return write_shop_tasks(tmp_path)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        (
            {"task": "EN-Shop-CLS-nope", "index": 0, "prediction": "x"},
            "preds:2: unknown task 'EN-Shop-CLS-nope'",
        ),
        (
            {"task": "EN-Shop-CLS-topic", "index": 2, "prediction": "x"},
            "preds:2: index 2 out of range",
        ),
        (
            {"task": "EN-Shop-CLS-topic", "index": -1, "prediction": "x"},
            "preds:2: index -1 out of range",
        ),
        (
            {"task": "EN-Shop-CLS-topic", "index": 0, "prediction": "y"},
            "preds:2: repeated prediction .* line 1",
        ),
        ({"task": "EN-Shop-CLS-topic", "index": "0", "prediction": "y"}, "preds:2: field 'index'"),
        ({"task": "EN-Shop-CLS-topic", "index": 1}, "preds:2: field 'prediction'"),
    ],
)
def test_collect_predictions_errors(data_dir, row, pattern):
    first = {"task": "EN-Shop-CLS-topic", "index": 0, "prediction": "Food"}
    with pytest.raises(DataError, match=pattern):
        predictions.collect_predictions(data_dir, [first, row], source="preds")


def test_read_predictions(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"task": "a", "index": 0, "prediction": ""}\n\n'
        '{"task": "b", "index": 3, "prediction": "x"}\n'
    )
    assert predictions.read_predictions(path) == [
        predictions.PredictionRow("a", 0, "", 1, source=str(path)),
        predictions.PredictionRow("b", 3, "x", 3, source=str(path)),
    ]
    path.write_text('{"task": "a", "index": 0, "prediction": ""}\n{"task": "a", "index": true}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'index' missing or not an integer"):
        predictions.read_predictions(path)


def test_collect_predictions_checks_targets_against_the_gold(data_dir):
    """Rows that carry `targets` (the evaluation writes them) were made on some data root:
    scored against another one with the same task names, they must not pass silently."""
    rows = [
        {"task": "EN-Shop-CLS-topic", "index": 0, "prediction": "Food", "targets": "Food"},
        {"task": "EN-Shop-CLS-topic", "index": 1, "prediction": "x", "targets": "Food"},
    ]
    with pytest.raises(DataError) as e:
        predictions.collect_predictions(data_dir, rows, source="preds")
    assert str(e.value) == (
        "preds:2: 'targets' of task 'EN-Shop-CLS-topic' index 1 differ from the gold answer "
        f"under {data_dir}: were the predictions made on another data root? "
        "Pass that root as --data_dir"
    )
    rows[1]["targets"] = "Price"
    assert predictions.collect_predictions(data_dir, rows)["EN-Shop-CLS-topic"].indices == [0, 1]
    rows[1]["targets"] = ["Price"]
    with pytest.raises(DataError, match="preds:2: field 'targets' is not a string"):
        predictions.collect_predictions(data_dir, rows, source="preds")


def test_read_predictions_from_a_folder(tmp_path, data_dir):
    """The evaluation's predictions/ folder (one .jsonl per task) reads as one file would,
    and errors name the file the row came from."""
    folder = tmp_path / "predictions"
    folder.mkdir()
    (folder / "notes.jsonl").write_text("mine")  # no task's name: not read
    with pytest.raises(DataError, match=r"folder holds no prediction files \(<task>.jsonl\)$"):
        predictions.read_predictions(folder)
    # The evaluation's folder given instead of its predictions/: said where they are.
    with pytest.raises(DataError) as info:
        predictions.read_predictions(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: folder holds no prediction files (<task>.jsonl) (the evaluation's "
        f"predictions are in {folder})"
    )
    b = folder / "ZH-Shop-Generate-title.jsonl"
    b.write_text('{"task": "ZH-Shop-Generate-title", "index": 0, "prediction": "y"}\n')
    a = folder / "EN-Shop-CLS-topic.jsonl"
    a.write_text('{"task": "EN-Shop-CLS-topic", "index": 0, "prediction": "Food"}\n')
    (folder / "notes.txt").write_text("not predictions")
    rows = predictions.read_predictions(folder)
    assert [(r.task, r.source, r.line) for r in rows] == [
        ("EN-Shop-CLS-topic", str(a), 1),
        ("ZH-Shop-Generate-title", str(b), 1),
    ]
    assert list(predictions.collect_predictions(data_dir, rows)) == [r.task for r in rows]
    b.write_text('{"task": "EN-Shop-CLS-topic", "index": 0, "prediction": "y"}\n')
    with pytest.raises(DataError) as e:
        predictions.collect_predictions(data_dir, predictions.read_predictions(folder))
    assert str(e.value) == (
        f"{b}:1: repeated prediction for 'EN-Shop-CLS-topic' index 0 (first on {a}:1)"
    )
