"""benchmarks/input_pipeline.py: examples and tokens counted per batch, one-line errors."""

import numpy as np
import pytest
from benchmark_helpers import exit_status


def test_input_pipeline_batch_counts():
    from benchmarks import input_pipeline as bip

    batch = {
        "decoder_segment_ids": np.array([[1, 1, 2, 2, 0], [1, 1, 1, 1, 1]]),
        "decoder_loss_weights": np.array([[0, 1, 0, 1, 0], [0, 0, 1, 1, 1]]),
    }
    assert bip.batch_counts(batch) == {"examples": 3, "tokens": 9, "answer_tokens": 5}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--batches", "0"],
            "python -m benchmarks.input_pipeline: error: argument --batches: '0' is not a "
            "positive integer",
        ),
        (
            ["--mixture", "nope"],
            "error: mixture 'nope': No Task or Mixture found with name 'nope'.",
        ),
    ],
)
def test_input_pipeline_user_errors_are_one_line(capsys, results, argv, message):
    from benchmarks import input_pipeline as bip

    assert exit_status(capsys, bip.main, argv) == (2, message)
