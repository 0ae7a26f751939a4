"""Write the paper's instructions for every task of a split as JSON Lines.

    python -m ecomgpt_jax.instructions --data_dir DIR --split test --output FILE.jsonl [--seed 0]

Each output row is ``{"task", "index", "inputs", "targets"}`` (the SeqIO feature names),
in task-name order then file order. Tasks without the split are skipped with a note on
stderr; a split other than train or test, or one that no chosen task has, is an error. Bad
input gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ecomgpt_jax.ecominstruct import instructions, reader


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ecomgpt_jax.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the usage line
    )
    parser.add_argument(
        "--data_dir",
        type=pathlib.Path,
        default=None,
        help="data root (<Dataset>/tasks/<task>/); default $ECOMGPT_DATA_DIR or the bundled sample",
    )
    parser.add_argument("--split", default="test", help=f"one of {', '.join(reader.SPLITS)}")
    parser.add_argument("--output", type=pathlib.Path, required=True, help="output .jsonl file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CLS candidate sampling")
    parser.add_argument(
        "--tasks",
        default="",
        help="comma-separated task folder (or SeqIO ecom:...) names (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parse_args(argv)
    try:
        if args.split not in reader.SPLITS:
            raise reader.DataError(
                f"--split {args.split!r}: unknown split (use {' or '.join(reader.SPLITS)})"
            )
        tasks = reader.discover_tasks(args.data_dir, allow_empty=False)
        reader.check_output_file(args.output, inputs=reader.input_files(tasks, args.split))
        wanted = [reader.as_folder_name(t) for t in args.tasks.split(",") if t]
        unknown = sorted(set(wanted) - set(tasks))
        if unknown:
            raise reader.DataError(
                f"unknown task(s) {unknown}; tasks here: {sorted(tasks)}",
                args.data_dir or reader.default_data_dir(),
            )
        chosen = {name: task for name, task in tasks.items() if not wanted or name in wanted}
        if not any(task.has_split(args.split) for task in chosen.values()):
            which = "none of the chosen tasks" if wanted else "no task"
            raise reader.DataError(
                f"{which} has a {args.split!r} split (no {args.split}.json)",
                args.data_dir or reader.default_data_dir(),
            )
        rows = []
        for name, task in chosen.items():
            if not task.has_split(args.split):
                print(f"note: {name} has no {args.split!r} split, skipped", file=sys.stderr)
                continue
            for inst in instructions.task_instructions(task, args.split, args.seed):
                rows.append(
                    {"task": inst.task, "index": inst.index, "inputs": inst.prompt,
                     "targets": inst.answer}
                )  # fmt: skip
        # Whole or not at all: a failure midway keeps the previous file as it was.
        partial = args.output.with_name(args.output.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            partial.replace(args.output)
        finally:
            partial.unlink(missing_ok=True)
    except (reader.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} instructions to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
