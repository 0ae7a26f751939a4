"""Prediction files: reading them and checking them against the data.

Rows are JSON Lines ``{"task", "index", "prediction"[, "targets"]}`` (task: folder name or
its SeqIO name; index: 0-based example position in the split). :func:`collect_predictions`
checks every row against the data root and groups them by task, for scoring
(:mod:`scoring`) and for comparing two sets of predictions (:mod:`significance`).

Pure Python: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

from ecomgpt_jax.ecominstruct import instructions, reader
from ecomgpt_jax.ecominstruct.reader import DataError


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """One model output. ``source`` and ``line`` (1-based) are where it came from, for
    error messages; ``targets`` is the gold answer the row was made with, if it says."""

    task: str
    index: int
    prediction: str
    line: int
    targets: str | None = None
    source: str | None = None


def _to_row(value: object, source: str, line: int) -> PredictionRow:
    if isinstance(value, PredictionRow):
        return value
    if not isinstance(value, Mapping):
        raise DataError(f"expected an object, got {type(value).__name__}", source, line)
    task, index, prediction = value.get("task"), value.get("index"), value.get("prediction")
    if not isinstance(task, str):
        raise DataError("field 'task' missing or not a string", source, line)
    if not isinstance(index, int) or isinstance(index, bool):
        raise DataError("field 'index' missing or not an integer", source, line)
    if not isinstance(prediction, str):
        raise DataError("field 'prediction' missing or not a string", source, line)
    targets = value.get("targets")
    if targets is not None and not isinstance(targets, str):
        raise DataError("field 'targets' is not a string", source, line)
    return PredictionRow(reader.as_folder_name(task), index, prediction, line, targets, source)


def task_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """An evaluation's prediction files in `folder`, <task folder name>.jsonl, in name
    order; other files there (a user's notes.jsonl) are not predictions."""

    def is_task(path: pathlib.Path) -> bool:
        try:
            reader.parse_task_name(path.name.removesuffix(".jsonl"))
        except DataError:
            return False
        return path.is_file()

    return sorted(p for p in pathlib.Path(folder).glob("*.jsonl") if is_task(p))


def read_predictions(path: str | os.PathLike) -> list[PredictionRow]:
    """Read predictions: JSON Lines of ``{"task", "index", "prediction"[, "targets"]}``.

    Args:
      path: a file, or a folder whose ``<task folder name>.jsonl`` files are read in name
        order (the evaluation's ``predictions/``, one file per task; `task_files`).

    Raises:
      DataError: "file:line: what" for an unparsable line or a bad field; a folder
        without prediction files.
    """
    path = pathlib.Path(path)
    files = task_files(path) if path.is_dir() else [path]
    if not files:
        hint = ""
        if (path / "predictions").is_dir():  # an evaluation's folder given for its files
            hint = f" (the evaluation's predictions are in {path / 'predictions'})"
        raise DataError(f"folder holds no prediction files (<task>.jsonl){hint}", path)
    return [
        _to_row(value, str(file), line)
        for file in files
        for line, value in reader.iter_json_lines(file)
    ]


@dataclasses.dataclass(frozen=True)
class TaskPredictions:
    """One task's checked predictions, in example order.

    Attributes:
      task: the task's TaskInfo. indices: list[int], the example positions predicted
      (ascending). examples, predictions, golds: lists aligned with `indices`. n_total:
      how many examples the split has.
    """

    task: reader.TaskInfo
    indices: list[int]
    examples: list[dict]
    predictions: list[str]
    golds: list[str]
    n_total: int

    def subset(self, indices: Sequence[int]) -> TaskPredictions:
        """The same task restricted to `indices` (a subset of ``self.indices``)."""
        where = {i: k for k, i in enumerate(self.indices)}
        ks = [where[i] for i in sorted(indices)]
        return TaskPredictions(
            self.task,
            [self.indices[k] for k in ks],
            [self.examples[k] for k in ks],
            [self.predictions[k] for k in ks],
            [self.golds[k] for k in ks],
            self.n_total,
        )


def collect_predictions(
    data_dir: str | os.PathLike | None,
    rows: Iterable[PredictionRow | Mapping],
    split: str = "test",
    source: str = "<predictions>",
) -> dict[str, TaskPredictions]:
    """Check prediction rows against the data and group them by task.

    Args:
      data_dir: data root (None: :func:`reader.default_data_dir`).
      rows: PredictionRow, or dicts {"task", "index", "prediction"[, "targets"]} (line =
        position + 1). A row's ``targets`` must equal the gold answer built here: rows
        made on another data root must not be scored against this one's answers.
      split: which split the predictions are for.
      source: name used in error messages for rows that do not name their file.

    Returns:
      dict task folder name -> TaskPredictions, sorted by task name.

    Raises:
      DataError: unknown task, index out of range, a repeated (task, index), or targets
        that differ from the gold answer, naming the row's line; a task without examples
        in `split`, naming its file; a data root without task folders.
    """
    data_dir = reader.default_data_dir() if data_dir is None else data_dir
    tasks = reader.discover_tasks(data_dir, allow_empty=False)
    examples: dict[str, list[dict]] = {}
    chosen: dict[str, dict[int, PredictionRow]] = {}
    for position, value in enumerate(rows):
        row = _to_row(value, source, position + 1)
        where = row.source or source
        if row.task not in tasks:
            raise DataError(f"unknown task {row.task!r} (not under {data_dir})", where, row.line)
        if row.task not in examples:
            examples[row.task] = reader.read_examples(tasks[row.task], split)
            if not examples[row.task]:  # the data's fault, not the row's ("out of range")
                raise DataError(
                    f"task {row.task!r} has no {split} examples to score against",
                    tasks[row.task].split_path(split),
                )
        if not 0 <= row.index < len(examples[row.task]):
            raise DataError(
                f"index {row.index} out of range for {row.task!r} "
                f"({len(examples[row.task])} {split} examples)",
                where,
                row.line,
            )
        seen = chosen.setdefault(row.task, {})
        if row.index in seen:
            first = seen[row.index]
            same_file = first.source == row.source
            first_at = (
                f"line {first.line}" if same_file else f"{first.source or source}:{first.line}"
            )
            raise DataError(
                f"repeated prediction for {row.task!r} index {row.index} (first on {first_at})",
                where,
                row.line,
            )
        if row.targets is not None and row.targets != instructions.build_answer(
            tasks[row.task], examples[row.task][row.index]
        ):
            # Same task names, other data (e.g. the bundled sample instead of the root
            # the predictions were made on): scores would be silently meaningless.
            raise DataError(
                f"'targets' of task {row.task!r} index {row.index} differ from the gold "
                f"answer under {data_dir}: were the predictions made on another data root? "
                "Pass that root as --data_dir",
                where,
                row.line,
            )
        seen[row.index] = row
    collected = {}
    for name in sorted(chosen):
        task, picked = tasks[name], chosen[name]
        order = sorted(picked)
        subset = [examples[name][i] for i in order]
        collected[name] = TaskPredictions(
            task,
            order,
            subset,
            [picked[i].prediction for i in order],
            [instructions.build_answer(task, e) for e in subset],
            len(examples[name]),
        )
    return collected
