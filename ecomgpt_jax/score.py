"""Score model predictions with the EcomGPT paper's metrics.

    python -m ecomgpt_jax.score --data_dir DIR --predictions FILE.jsonl --output FILE.json
    python -m ecomgpt_jax.score --data_dir DIR --predictions EVAL_DIR/predictions --output FILE.json

Predictions are JSON Lines rows ``{"task", "index", "prediction"}`` (task: folder name or
its SeqIO name; index: 0-based example position in the split), in one file or in every
<task folder name>.jsonl file of a folder. A row that also carries ``targets`` (the
evaluation writes them) must match the gold answer under DIR, else predictions made on
other data would be scored against this data's answers. The output JSON is
``{<task folder>: scores, ..., "average": {...}}`` with scores in [0, 1] (NaN written as
null; a key's average is over the tasks where it is not null, counted per key in the
average's "tasks"); the printed table shows them
x100 and footnotes such an average with its task count. A task with predictions for part of
its examples gets one "warning:" line on stderr.
Bad input gives one line on stderr naming the file and line, and exit status 2; a
Ctrl-C gives "interrupted" and 130.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ecomgpt_jax import launch
from ecomgpt_jax.ecominstruct import predictions, reader, scoring


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ecomgpt_jax.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the usage lines
    )
    parser.add_argument(
        "--data_dir",
        type=pathlib.Path,
        default=None,
        help="data root (<Dataset>/tasks/<task>/); default $ECOMGPT_DATA_DIR or the bundled sample",
    )
    parser.add_argument(
        "--predictions",
        type=pathlib.Path,
        required=True,
        help="JSON Lines file, or a folder of them (the evaluation's predictions/)",
    )
    parser.add_argument("--output", type=pathlib.Path, required=True, help="scores .json file")
    parser.add_argument("--split", default="test", help="split the predictions are for")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (a Ctrl-C: one line, 130)."""
    args = _parse_args(argv)
    return launch.status_of(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        # (score_predictions reads the tasks again: their meta-info only, milliseconds.)
        tasks = reader.discover_tasks(args.data_dir, allow_empty=False)
        read = reader.input_files(tasks, args.split, [args.predictions])
        reader.check_output_file(args.output, inputs=read)
        rows = predictions.read_predictions(args.predictions)
        if not rows:
            raise reader.DataError("no predictions", args.predictions)
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
