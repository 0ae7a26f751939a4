"""MODEL_DIR, a training run's folder: the checks that it can be one, and the files a run
writes there beside its checkpoints (what eval, convert and a resume read next).

    MODEL_DIR/checkpoints/<step>/     (checkpointing.Checkpointer)
              config.gin              the resolved gin config, headed by the command
              config.until_step_N.gin the config that trained steps up to N, where a
                                      resume at N changed it
              model_config.json       the ModelConfig (checkpointing.save_model_config)
              tokenizer.json, ...     a Hugging Face vocabulary's files (hf_hub.TOKENIZER_FILES)
              metrics.jsonl, tensorboard/, <evaluation>.jsonl   (metrics_logger)

Local paths or gs:// (through etils.epath). Raises run_config.UserError naming MODEL_DIR.
"""

from __future__ import annotations

import os

from ecomgpt_jax import checkpointing, eval_outputs, hf_hub, run_config
from ecomgpt_jax.models.config import ModelConfig


def check(model_dir: str) -> None:
    """UserError for a local MODEL_DIR that cannot be a folder: it, or a folder it would
    be created in, is a file (orbax would fail with a trace at its first write); or that
    is an evaluation's folder."""
    problem = checkpointing.not_a_folder(model_dir)
    if problem:
        raise run_config.UserError(f"MODEL_DIR {model_dir} {problem}: give a folder")
    if "://" in str(model_dir):  # local paths only: a bucket's answer would cost a request
        return
    folder = checkpointing.as_path(model_dir)
    predictions = folder / eval_outputs.PREDICTIONS_DIR
    if (folder / "metrics.json").exists() and predictions.is_dir():
        # Its tensorboard/ and logs would mix with the evaluation's (eval refuses the
        # other way round).
        raise run_config.UserError(
            f"MODEL_DIR {model_dir} is an evaluation's folder (it has metrics.json and "
            f"{eval_outputs.PREDICTIONS_DIR}/): give a training run's folder"
        )


def make(model_dir: str) -> None:
    """Process 0 makes MODEL_DIR and checks that it can write there (the others: nothing),
    before any weights load: orbax would fail at its first write with a trace, the
    other processes waiting in its barrier."""
    import jax

    if jax.process_index() != 0:
        return
    try:
        checkpointing.make_writable_folder(model_dir)
    except Exception as e:  # OSError; a bucket's own errors (permissions) for gs://
        text = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise run_config.UserError(f"MODEL_DIR {model_dir}: cannot write there ({text})") from None


def tokenizer_dir(model_dir: str) -> str | None:
    """MODEL_DIR itself where it holds a checkpoint and the tokenizer.json a run copied
    there (a resume's tokenizer: the one it started from may be gone by then), else None."""
    root = checkpointing.as_path(model_dir)
    if checkpointing.has_checkpoint(root) and (root / "tokenizer.json").is_file():
        return str(root)
    return None


def write_run_files(
    model_dir: str, cfg: ModelConfig, config_text: str, vocabulary, start: int = 0
) -> None:
    """On process 0: MODEL_DIR/config.gin (`config_text`), model_config.json and, for a
    Hugging Face vocabulary (one with a `path` to its tokenizer.json), the tokenizer
    files beside it. Each is written whole or not at all.

    start: the step this command trains from. A resume with another config keeps the
    one that trained the steps before as config.until_step_<start>.gin (the first such
    at that step: a later one trained nothing that was saved).
    """
    import jax

    if jax.process_index() != 0:
        return
    root = checkpointing.as_path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = getattr(vocabulary, "path", None)
    if tokenizer is not None and checkpointing.as_path(tokenizer).name == "tokenizer.json":
        for name in hf_hub.TOKENIZER_FILES:
            source, target = checkpointing.as_path(tokenizer).parent / name, root / name
            # A resume reads MODEL_DIR's own copy: nothing to copy (or to cut short).
            if "://" in str(target):
                same = str(source) == str(target)
            else:  # through links: the same file under another name
                same = os.path.realpath(source) == os.path.realpath(target)
            if source.is_file() and not same:
                checkpointing.write_atomically(target, source.read_bytes())
    config, earlier = root / "config.gin", root / f"config.until_step_{start}.gin"
    if start and config.exists() and config.read_text() != config_text and not earlier.exists():
        config.replace(earlier)
    checkpointing.write_atomically(config, config_text)
    checkpointing.save_model_config(root, cfg)
