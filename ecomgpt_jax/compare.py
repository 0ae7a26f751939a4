"""Compare two models' predictions on the same held-out examples, with confidence intervals.

    python -m ecomgpt_jax.compare --baseline A/predictions --candidate B/predictions
    python -m ecomgpt_jax.compare --baseline a.jsonl --candidate b.jsonl --output diff.json

A and B are what `python -m ecomgpt_jax.score` reads (the evaluation's predictions/
folders, or JSON Lines files), for the same data root. Each task is compared on the
examples both predicted (a task or example only one side has is left out, with one
"warning:" line). The table shows candidate - baseline per task and score, x100, with its
95% paired-bootstrap interval (ecominstruct/significance.py); "*" marks an interval
that excludes 0 (the JSON output also has a two-sided p-value); a task of one example
has no interval. The average row draws every task in each replicate. Neither marks nor
p-values are corrected for the number of tasks compared.

Bad input gives one line on stderr naming the file and line, and exit status 2; a
Ctrl-C gives "interrupted" and 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys

from ecomgpt_jax import launch
from ecomgpt_jax.ecominstruct import predictions, reader, scoring, significance


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in keys if k not in significance.KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown score {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(significance.KEYS)}"
        )
    return keys


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ecomgpt_jax.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the usage lines
    )
    parser.add_argument(
        "--baseline", type=pathlib.Path, required=True, help="predictions file or folder"
    )
    parser.add_argument(
        "--candidate", type=pathlib.Path, required=True, help="predictions file or folder"
    )
    parser.add_argument(
        "--data_dir",
        type=pathlib.Path,
        default=None,
        help="data root (<Dataset>/tasks/<task>/); default $ECOMGPT_DATA_DIR or the bundled sample",
    )
    parser.add_argument("--split", default="test", help="split the predictions are for")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="seed of the replicates")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage")
    parser.add_argument(
        "--keys",
        type=_keys,
        default=significance.KEYS,
        help="comma-separated scores the table shows (default: all of "
        f"{','.join(significance.KEYS)}); the --output file has all",
    )
    parser.add_argument("--output", type=pathlib.Path, help="also write the comparison as JSON")
    return parser.parse_args(argv)


def paired_predictions(
    base: dict[str, predictions.TaskPredictions], cand: dict[str, predictions.TaskPredictions]
) -> tuple[dict, list[str]]:
    """Both sides restricted to the examples both predicted.

    Returns:
      (task name -> (baseline, candidate) TaskPredictions, warning lines).
    """
    warnings, pairs = [], {}
    one_sided = sorted(set(base) ^ set(cand))
    if one_sided:
        warnings.append(f"tasks predicted on one side only, left out: {', '.join(one_sided)}")
    for name in sorted(set(base) & set(cand)):
        a, b = base[name], cand[name]
        common = sorted(set(a.indices) & set(b.indices))
        if not common:
            warnings.append(f"{name}: no example predicted on both sides, left out")
        elif len(common) != max(len(a.indices), len(b.indices)):
            warnings.append(
                f"{name}: compared on the {len(common)} examples both predicted "
                f"(baseline {len(a.indices)}, candidate {len(b.indices)})"
            )
        if common:
            pairs[name] = (a.subset(common), b.subset(common))
    return pairs, warnings


def _cell(d: significance.Difference) -> str:
    if math.isnan(d.delta):
        return "n/a"
    if math.isnan(d.low):  # one example: no interval
        return f"{100 * d.delta:+.2f} [n/a] "
    mark = "*" if d.excludes_zero else " "
    return f"{100 * d.delta:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]{mark}"


def format_comparison(result: dict, counts: dict[str, int], config, keys=significance.KEYS) -> str:
    """The comparison table: one row per task, then the average's difference and the two
    averages themselves; cells x100, columns `keys`. `result`: paired_bootstrap's, with
    an average; counts: task -> examples compared; config: the BootstrapConfig used."""
    headers = ("task", "n", *keys)
    average = result[scoring.AVERAGE_KEY]
    rows = [
        (name, str(counts[name]), *(_cell(d[k]) for k in keys))
        for name, d in result.items()
        if name != scoring.AVERAGE_KEY
    ]
    tail = [
        ("average", f"{len(rows)} tasks", *(_cell(average[k]) for k in keys)),
        *(
            (f"{side} average", "", *(f"{100 * getattr(average[k], side):.2f}" for k in keys))
            for side in ("baseline", "candidate")
        ),
    ]
    title = (
        f"candidate - baseline, x100, with {100 * config.confidence:g}% paired-bootstrap "
        f"intervals ({config.samples} replicates, seed {config.seed}); * the interval excludes 0"
    )
    lines = [title, *scoring.text_table(headers, rows, tail)]
    return "\n".join(lines)


def comparison_json(result: dict, counts: dict[str, int], args) -> dict:
    """The --output file: settings, then task -> {"n", key -> Difference fields}."""
    tasks = {
        name: {"n": counts[name] if name in counts else sum(counts.values())}
        | {k: dataclasses.asdict(d[k]) for k in d}
        for name, d in result.items()
    }
    settings = {
        "baseline": str(args.baseline),
        "candidate": str(args.candidate),
        "samples": args.samples,
        "seed": args.seed,
        "confidence": args.confidence,
    }
    return scoring.json_safe({"settings": settings, **tasks})


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (a Ctrl-C: one line, 130)."""
    args = _parse_args(argv)
    return launch.status_of(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        config = significance.BootstrapConfig(args.samples, args.seed, args.confidence)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        tasks = reader.discover_tasks(args.data_dir, allow_empty=False)
        if args.output:
            read = reader.input_files(tasks, args.split, [args.baseline, args.candidate])
            reader.check_output_file(args.output, inputs=read)
        sides = [
            predictions.collect_predictions(
                args.data_dir, predictions.read_predictions(path), args.split, str(path)
            )
            for path in (args.baseline, args.candidate)
        ]
        pairs, warnings = paired_predictions(*sides)
        if not pairs:
            a, b = (", ".join(side) for side in sides)
            raise reader.DataError(
                f"no example is predicted on both sides (baseline: {a}; candidate: {b})",
                args.candidate,
            )
        stats = {
            name: tuple(
                significance.task_stats(p.task, p.examples, p.predictions, p.golds) for p in pair
            )
            for name, pair in pairs.items()
        }
    except (reader.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    result = significance.paired_bootstrap(stats, config)
    counts = {name: len(a.indices) for name, (a, _) in pairs.items()}
    if args.output:
        text = json.dumps(comparison_json(result, counts, args), ensure_ascii=False, indent=2)
        args.output.write_text(text + "\n", encoding="utf-8")
    print(format_comparison(result, counts, config, args.keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
