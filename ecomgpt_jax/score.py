"""Score model predictions with the EcomGPT paper's metrics.

    python -m ecomgpt_jax.score --data_dir DIR --predictions FILE.jsonl --output FILE.json

Predictions are JSON Lines rows ``{"task", "index", "prediction"}`` (task: folder name or
its SeqIO name; index: 0-based example position in the split). The output JSON is
``{<task folder>: scores, ..., "average": {...}}`` with scores in [0, 1] (NaN written as
null); the printed table shows them x100. Bad input gives one line on stderr naming the
file and line, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ecomgpt_jax.ecominstruct import reader, scoring


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ecomgpt_jax.score", description=__doc__)
    parser.add_argument(
        "--data_dir",
        type=pathlib.Path,
        default=None,
        help="data root (<Dataset>/tasks/<task>/); default $ECOMGPT_DATA_DIR or the bundled sample",
    )
    parser.add_argument("--predictions", type=pathlib.Path, required=True, help="JSON Lines file")
    parser.add_argument("--output", type=pathlib.Path, required=True, help="scores .json file")
    parser.add_argument("--split", default="test", help="split the predictions are for")
    return parser.parse_args(argv)


def check_tasks_have_examples(data_dir, rows: list[scoring.PredictionRow], split: str) -> None:
    """DataError naming the split file of a task that the predictions name but that has no
    examples: otherwise the first row for it reads as the predictions' fault ("index 0
    out of range")."""
    tasks = reader.discover_tasks(data_dir)
    for name in dict.fromkeys(row.task for row in rows):
        task = tasks.get(name)
        # Unknown tasks and missing splits: score_predictions names them.
        if task is None or not task.has_split(split):
            continue
        path = task.split_path(split)
        # Reads only up to the first example.
        if next(reader.iter_json_lines(path), None) is None:
            raise reader.DataError(f"task {name!r} has no {split} examples to score against", path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parse_args(argv)
    try:
        rows = scoring.read_predictions(args.predictions)
        if not rows:
            raise reader.DataError("no predictions", args.predictions)
        check_tasks_have_examples(args.data_dir, rows, args.split)
        scores = scoring.score_predictions(
            args.data_dir, rows, split=args.split, source=str(args.predictions)
        )
        args.output.write_text(
            json.dumps(scoring.scores_json(scores), ensure_ascii=False, indent=2) + "\n",
            encoding="utf-8",
        )
    except (reader.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, s in scores.items():
        if "warning" in s:
            print(f"warning: {name}: {s['warning']}", file=sys.stderr)
    print(scoring.format_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
