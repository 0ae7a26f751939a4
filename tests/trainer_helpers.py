"""What the trainer and train tests share (a helper module, not a test module: pytest
collects only `test_*.py`): a tiny model, a run configuration, meshes of the simulated CPU
devices, `python -m ecomgpt_jax.train` run in this process."""

import contextlib
import dataclasses
import io
import os
import pathlib

import gin
import jax
import numpy as np
import pytest
from absl import flags

from ecomgpt_jax import checkpointing, launch, run_config, train
from ecomgpt_jax import partitioning as P
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config

ROOT = pathlib.Path(__file__).resolve().parent.parent

# tiny-bloom made smaller still: steps here cost milliseconds.
TINY = dataclasses.replace(
    model_config.get_preset("tiny-bloom"),
    hidden=32,
    heads=4,
    kv_heads=4,
    head_dim=8,
    mlp_dim=128,  # BLOOM: 4 * hidden (as HF config.json implies)
    vocab_size=128,
    max_positions=256,
)


def tiny_batch() -> dict[str, np.ndarray]:
    """One random batch for TINY: 8 rows of 16 tokens, every target weighted."""
    tokens = np.random.RandomState(0).randint(0, TINY.vocab_size, (2, 8, 16)).astype(np.int32)
    return {
        ts.INPUTS: tokens[0],
        ts.TARGETS: tokens[1],
        ts.WEIGHTS: np.ones((8, 16), np.float32),
        ts.SEGMENT_IDS: np.ones((8, 16), np.int32),
        ts.POSITIONS: np.tile(np.arange(16, dtype=np.int32), (8, 1)),
    }


def tiny_run(tmp_path, **train) -> run_config.RunConfig:
    """A 4-step tiny-bloom run in tmp_path/run; `train` overrides TrainConfig fields."""
    return run_config.RunConfig(
        train=run_config.TrainConfig(
            **{"model_dir": str(tmp_path / "run"), "train_steps": 4} | train
        ),
        model=run_config.ModelSpec(config=model_config.get_preset("tiny-bloom")),
        optimizer=ts.OptimizerConfig(),
        step=ts.StepConfig(),
        checkpoint=checkpointing.CheckpointConfig(),
    )


def mesh_of(shape, n=8):
    """A (data, fsdp, tensor) mesh of `shape` over the first `n` devices."""
    return P.make_mesh(P.MeshConfig(shape), jax.devices()[:n])


@contextlib.contextmanager
def _train_flags(model_dir, args):
    """The flags of `python -m ecomgpt_jax.train --gin_file=gin_configs/ecom.gin
    --gin.MODEL_DIR=model_dir *args`, parsed, in the repository root; yields argv."""
    argv = train.rewrite_gin_args(
        ["train", "--gin_file=gin_configs/ecom.gin", f"--gin.MODEL_DIR='{model_dir}'", *args]
    )
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    gin.clear_config()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        yield argv
    finally:
        os.chdir(cwd)
        gin.clear_config()
        flags.FLAGS.unparse_flags()  # the next user parses its own


def run_in_process(tmp_path, *args) -> str:
    """train.main in this process (no TensorFlow start-up cost), expected to stop with a
    user error; returns its exit message."""
    stderr = io.StringIO()
    with (
        _train_flags(tmp_path, args) as argv,
        pytest.raises(SystemExit) as exit_info,
        contextlib.redirect_stderr(stderr),
    ):
        train.main(argv)
    assert exit_info.value.code == launch.USAGE_EXIT_CODE
    return stderr.getvalue().removesuffix("\n")


def train_in_process(model_dir, *args) -> None:
    """train.main in this process, expected to finish (its output goes to stdout)."""
    with _train_flags(model_dir, args) as argv:
        train.main(argv)
