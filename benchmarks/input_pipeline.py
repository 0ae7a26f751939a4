"""Host input-pipeline throughput: SeqIO mixture -> packed global batches (numpy).

    python -m benchmarks.input_pipeline                          # bundled sample, held-in
    python -m benchmarks.input_pipeline --inputs 1024 --targets 1024 --batch 8 --batches 50

Uses `ecomgpt_jax.input_pipeline.InputIterator` exactly as training does (one device
mesh, `local_batch()`: tokenised, packed, batched numpy rows; the host-to-device copy is
not timed). The first batch, which builds the tf.data graph, tokenises and fills the
shuffle buffer, is reported separately as `startup_s`. Then `--batches` batches are
timed:

    examples_per_s    packed examples (segments) per second
    tokens_per_s      non-padding tokens per second
    answer_tokens_per_s  tokens carrying loss per second
    packing_efficiency   non-padding tokens / (batch * length)

Data: `$ECOMGPT_DATA_DIR` when set, else the bundled sample. Needs TensorFlow and SeqIO
(unlike the other benchmarks).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import report
from ecomgpt_jax import input_pipeline, partitioning


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__)
    p.add_argument("--mixture", default="ecom_instruct_held_in", help="SeqIO mixture or task")
    count = report.positive_int
    p.add_argument("--inputs", type=count, default=96, help="prompt tokens per packed row")
    p.add_argument("--targets", type=count, default=32, help="answer tokens per packed row")
    p.add_argument("--batch", type=count, default=8, help="global batch (rows)")
    p.add_argument("--batches", type=count, default=50, help="timed batches")
    p.add_argument("--no_pack", action="store_true", help="one example per row")
    p.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
    return p.parse_args(argv)


def batch_counts(batch: dict[str, np.ndarray]) -> dict[str, int]:
    """Examples (segments), non-padding tokens and answer tokens of one packed batch
    ({feature: [rows, L]}, `decoder_segment_ids` 0 on padding)."""
    seg = batch["decoder_segment_ids"]
    examples = 0
    for row in seg:
        examples += len(np.unique(row[row > 0]))
    return {
        "examples": examples,
        "tokens": int((seg > 0).sum()),
        "answer_tokens": int((batch["decoder_loss_weights"] > 0).sum()),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import tasks  # noqa: F401 - registers the SeqIO tasks and mixtures

    config = input_pipeline.DataConfig(
        mixture_or_task_name=args.mixture,
        task_feature_lengths={"inputs": args.inputs, "targets": args.targets},
        global_batch_size=args.batch,
        pack=not args.no_pack,
    )
    mesh = partitioning.make_mesh(partitioning.MeshConfig((1, 1, 1)), jax.devices()[:1])
    # An unknown mixture or a bad data file surfaces while batches are made.
    with report.exit_on_user_error():
        start = time.perf_counter()
        it = input_pipeline.InputIterator(config, mesh)
        it.local_batch()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        batches = [it.local_batch() for _ in range(args.batches)]
        seconds = time.perf_counter() - start

    totals = {"examples": 0, "tokens": 0, "answer_tokens": 0}
    for b in batches:
        for key, value in batch_counts(b).items():
            totals[key] += value
    length = config.sequence_length
    record = {
        "bench": "input_pipeline",
        "mixture": args.mixture,
        "batch": args.batch,
        "seq": length,
        "pack": not args.no_pack,
        "batches": args.batches,
        "startup_s": round(startup, 2),
        "batches_per_s": round(args.batches / seconds, 2),
        "examples_per_s": round(totals["examples"] / seconds, 1),
        "tokens_per_s": round(totals["tokens"] / seconds, 1),
        "answer_tokens_per_s": round(totals["answer_tokens"] / seconds, 1),
        "packing_efficiency": round(totals["tokens"] / (args.batches * args.batch * length), 4),
        "examples_per_row": round(totals["examples"] / (args.batches * args.batch), 3),
    }
    report.emit(record)
    if not args.no_record:
        report.append_result(report.command_line("benchmarks.input_pipeline"), record)
    return record


if __name__ == "__main__":
    main()
