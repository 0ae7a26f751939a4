"""Task folders in the public EcomInstruct layout, written by the tests (a helper module,
not a test module: pytest collects only `test_*.py`)."""

import json
import pathlib

from ecomgpt_jax.ecominstruct import reader


def write_task(root, name, meta, rows=None, *, lines=None, split="test") -> pathlib.Path:
    """Writes <root>/<Dataset>/tasks/<name>/ and returns the folder.

    Args:
      root: the data root.
      name: the folder name, `<LANG>-<Dataset>-<TYPE>-<name>`.
      meta: meta-info.json's content: a dict, or text written as it is (malformed files).
      rows: dicts, one JSON line each in <split>.json.
      lines: or the lines of <split>.json as text.
      split: the split file written.
    """
    folder = pathlib.Path(root) / name.split("-")[1] / "tasks" / name
    folder.mkdir(parents=True, exist_ok=True)
    text = meta if isinstance(meta, str) else json.dumps(meta, ensure_ascii=False)
    (folder / "meta-info.json").write_text(text, encoding="utf-8")
    if rows is not None:
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if lines is not None:
        (folder / f"{split}.json").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return folder


def make_task(root, name, meta, rows) -> reader.TaskInfo:
    """write_task's test split, read back."""
    return reader.load_task(write_task(root, name, meta, rows))


def cls_task(root, n_labels=100, n_rows=200) -> tuple[reader.TaskInfo, list[str]]:
    """A classification task with `n_labels` candidates (L0, L1, ...); row i's answer is
    label i % n_labels and "Other". Returns (the task, the labels)."""
    labels = [f"L{i}" for i in range(n_labels)]
    meta = {
        "defi": "cat",
        "test_prompt": {"instruction": "{sentences}\nCandidates: {label_set}\n### Response:"},
        "label_set": {"k": labels},
        "label_key": "k",
        "label_sep": ", ",
    }
    rows = [
        {"sentences": f"s{i}", "labels": {"k": [labels[i % n_labels], "Other"]}}
        for i in range(n_rows)
    ]
    return make_task(root, "EN-Shop-CLS-cat", meta, rows), labels


def write_shop_tasks(root) -> pathlib.Path:
    """Two small tasks under `root`: EN-Shop-CLS-topic (2 examples, labels Food / Price)
    and ZH-Shop-Generate-title (1 example, answer 红色T恤). Returns `root`."""
    write_task(
        root,
        "EN-Shop-CLS-topic",
        {
            "defi": "topic",
            "test_prompt": {"instruction": "{sentences} {label_set}"},
            "label_set": {"k": ["Food", "Price"]},
            "label_key": "k",
        },
        [
            {"sentences": "s", "labels": {"k": ["Food"]}},
            {"sentences": "t", "labels": {"k": ["Price"]}},
        ],
    )
    write_task(
        root,
        "ZH-Shop-Generate-title",
        {"defi": "title", "test_prompt": {"instruction": "{sentences}"}},
        [{"sentences": "x", "spans": [{"term": "红色T恤"}]}],
    )
    return root
