"""What a training run is, and the checks that say in one line why it cannot work.

The frozen dataclasses `train.py` binds from gin (`TrainConfig`, `ModelSpec`, and
`RunConfig`, which groups them with the optimizer, step, checkpoint and evaluation
configs), the model config a run trains (gin-bound, or the architecture of its initial
weights or of MODEL_DIR on a resume), and the checks of the model, batch and sequence
shapes against the mesh. Free of gin and TensorFlow; `UserError` is what `train.py`
prints as one line.
"""

from __future__ import annotations

import dataclasses

from ecomgpt_jax import checkpointing, evaluation, partitioning
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import hf_io
from ecomgpt_jax.values import is_integer, is_path


class UserError(ValueError):
    """A run configuration that cannot work (reported as one line by train.py)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model, and its vocabulary.

    config: the ModelConfig bound by a gin_configs/models/*.gin file (and any
    `--gin.ModelConfig.<field>` overrides). With `TrainConfig.init_from_hf` the
    architecture comes from the HF folder's config.json, with `init_from_checkpoint`
    from the checkpoint's model_config.json; in both cases the run settings
    (`model_config.RUNTIME_FIELDS`: dtypes, remat policy, layer scan, attention kernel),
    which neither file holds for this run, still come from `config`.
    vocabulary: "sentencepiece" (path None: the bundled sample model) or
    "huggingface" (path None: the tokenizer.json of `init_from_hf`).
    """

    config: model_config.ModelConfig
    vocabulary: str = "sentencepiece"
    vocabulary_path: str | None = None

    def __post_init__(self):
        if self.vocabulary_path is not None and not is_path(self.vocabulary_path):
            raise UserError(f"VOCABULARY_PATH must be a path or None, got {self.vocabulary_path!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run: where, how long, on which mesh, starting from what.

    mesh_shape: (data, fsdp, tensor) sizes, one may be -1 ("the rest").
    init_from_hf / init_from_checkpoint: initial weights when MODEL_DIR holds no
    checkpoint yet (a checkpoint in MODEL_DIR always wins: that is a resume, which reads
    neither folder: MODEL_DIR holds the architecture and the HF tokenizer files).
    init_from_hf is a HF folder, or a hub path hf://ORG/NAME[@REVISION], which
    `train.download_init_weights` replaces with its local snapshot.
    data_dir: the EcomInstruct root (None: $ECOMGPT_DATA_DIR, else the bundled sample).
    tfds_data_dir: where `python -m tasks.tfds_builder` prepared the tasks (None: its
    default, <data root>/_tfds); tasks without a current copy there read their JSON.
    infer_eval_every_steps: decode and score `RunConfig.infer_eval` every N steps
    (T5X's infer_eval; 0 = never).
    eval_loss_every_steps: the teacher-forced loss on held-out batches every N steps
    (T5X's training eval; 0 = never), on the first `eval_loss_batches` batches of each
    task of the `eval_loss/DataConfig` mixture. Both evaluations also run at step 0 and
    after the last step (`Trainer.fit`).
    """

    model_dir: str = "runs/ecom_default"
    train_steps: int = 300
    mesh_shape: tuple[int, int, int] = (-1, 1, 1)
    seed: int = 0
    log_every_steps: int = 10
    init_from_hf: str | None = None
    init_from_checkpoint: str | None = None
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    infer_eval_every_steps: int = 0
    eval_loss_every_steps: int = 0
    eval_loss_batches: int = 2

    def __post_init__(self):
        for macro, value, least in (
            # 0 or negative would "finish" at once and point at a checkpoint never written.
            ("TRAIN_STEPS", self.train_steps, 1),
            ("LOG_EVERY_STEPS", self.log_every_steps, 1),
            ("INFER_EVAL_EVERY_STEPS", self.infer_eval_every_steps, 0),
            ("EVAL_LOSS_EVERY_STEPS", self.eval_loss_every_steps, 0),
            ("EVAL_LOSS_BATCHES", self.eval_loss_batches, 1),
        ):
            if not is_integer(value) or value < least:
                raise UserError(f"{macro} must be an integer >= {least}, got {value!r}")
        if not is_path(self.model_dir):
            raise UserError(f"MODEL_DIR must be a folder path, got {self.model_dir!r}")
        for macro, value in (
            ("INIT_FROM_HF", self.init_from_hf),
            ("INIT_FROM_CHECKPOINT", self.init_from_checkpoint),
            ("DATA_DIR", self.data_dir),
            ("TFDS_DATA_DIR", self.tfds_data_dir),
        ):
            if value is not None and not is_path(value):
                raise UserError(f"{macro} must be a path or None, got {value!r}")
        if self.init_from_hf and self.init_from_checkpoint:
            # Two starting points: either choice would silently drop the other.
            raise UserError(
                "INIT_FROM_HF and INIT_FROM_CHECKPOINT are both set: give one (the other None)"
            )
        # It seeds the initial weights and dropout: None would draw other numbers on every
        # run, and a resume would go on from numbers the first run never drew.
        if not is_integer(self.seed):
            raise UserError(f"SEED must be an integer, got {self.seed!r}")
        try:  # the mesh's own check (eval's MESH_SHAPE gets the same)
            shape = partitioning.MeshConfig(self.mesh_shape).shape
        except partitioning.MeshError as e:
            raise UserError(str(e)) from None
        object.__setattr__(self, "mesh_shape", shape)  # a list from gin works too


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """All configs of one run (each a frozen dataclass bound by gin in train.py)."""

    train: TrainConfig
    model: ModelSpec
    optimizer: ts.OptimizerConfig
    step: ts.StepConfig
    checkpoint: checkpointing.CheckpointConfig
    infer_eval: evaluation.EvalConfig | None = None


def build_model_config(run: RunConfig) -> model_config.ModelConfig:
    """The gin-bound ModelConfig, or the architecture of INIT_FROM_HF / INIT_FROM_CHECKPOINT
    with the gin-bound run settings (e.g. bloomz-7b1's full rematerialisation, without
    which its activations do not fit a chip).

    A resume takes the architecture from MODEL_DIR/model_config.json (what its
    checkpoints were trained as), with the gin-bound run settings: a changed norm_eps,
    rope_theta or eos id would otherwise pass the restore's shape check and go on
    training another model; `unused_bindings_note` names what was not used. It does not
    read the initial weights' folder, which may be gone by then.

    Raises UserError when the weights are of another family than the gin-bound config:
    its run settings were then chosen for another model (a models/*.gin file forgotten).
    """
    bound = run.model.config
    source = architecture_source(run.train)
    if source is None:
        return bound
    if source == RESUMED_CONFIG:
        cfg = checkpointing.load_model_config(run.train.model_dir)
    elif source == "INIT_FROM_HF":
        cfg = hf_io.read_hf_config(run.train.init_from_hf)
    else:
        cfg = _init_checkpoint_config(run.train.init_from_checkpoint)
    if cfg.family != bound.family:
        raise UserError(
            f"{source} holds a {cfg.hf_model_type} model but ModelConfig is a "
            f"{bound.hf_model_type} one: include a gin_configs/models/*.gin file of its "
            "family and size, which sets how it runs (dtypes, remat policy, layer scan, "
            "attention kernel); the weights give the architecture"
        )
    runtime = {f: getattr(bound, f) for f in model_config.RUNTIME_FIELDS}
    return dataclasses.replace(cfg, **runtime)


def unused_bindings_note(run: RunConfig, cfg: model_config.ModelConfig) -> str | None:
    """None, or a line naming the gin-bound ModelConfig fields that `cfg` (from
    `build_model_config`) does not have: with INIT_FROM_HF / INIT_FROM_CHECKPOINT the
    architecture is the weights', whatever a models/*.gin file or override says. Many
    of them mean the run settings were chosen for a model of another size."""
    bound = run.model.config
    unused = [
        f"{f.name}={getattr(bound, f.name)!r} (weights: {getattr(cfg, f.name)!r})"
        for f in dataclasses.fields(cfg)
        if getattr(bound, f.name) != getattr(cfg, f.name)
    ]
    if not unused:
        return None
    return (
        f"note: {architecture_source(run.train)} sets the architecture; these ModelConfig "
        "bindings are not used: " + ", ".join(unused)
    )


RESUMED_CONFIG = "MODEL_DIR/model_config.json"


def architecture_source(train: TrainConfig) -> str | None:
    """Where `build_model_config` takes the architecture from: RESUMED_CONFIG (a resume),
    INIT_FROM_HF (first), INIT_FROM_CHECKPOINT, or None (the gin-bound ModelConfig)."""
    root = checkpointing.as_path(train.model_dir)
    if checkpointing.has_checkpoint(root) and (root / checkpointing.MODEL_CONFIG_FILE).is_file():
        return RESUMED_CONFIG
    if not (train.init_from_hf or train.init_from_checkpoint):
        return None
    return "INIT_FROM_HF" if train.init_from_hf else "INIT_FROM_CHECKPOINT"


def _init_checkpoint_config(path: str) -> model_config.ModelConfig:
    """The model_config.json of INIT_FROM_CHECKPOINT; UserError in terms of that macro."""
    try:
        checkpointing.resolve_params_path(path)  # does not exist / holds no checkpoint
    except checkpointing.CheckpointError as e:
        raise UserError(f"INIT_FROM_CHECKPOINT: {e}") from None
    cfg = checkpointing.find_model_config(path)
    if cfg is None:
        raise UserError(
            f"INIT_FROM_CHECKPOINT: {path} holds a checkpoint but no "
            f"{checkpointing.MODEL_CONFIG_FILE} at or above it (train.py and "
            "`convert hf-to-orbax` write one); copy the one it was made with next to it"
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The per-step shapes checked against the model and the mesh."""

    global_batch_size: int
    sequence_length: int
    vocab_size: int


# The ModelConfig field that sizes each logical axis of the parameters and activations:
# `check_shapes` checks it against the mesh axes `partitioning.RULES` split that axis over.
_SIZED_BY = {
    partitioning.VOCAB: "vocab_size",
    partitioning.ACT_VOCAB: "vocab_size",
    partitioning.EMBED: "hidden",
    partitioning.ACT_EMBED: "hidden",
    partitioning.MLP: "mlp_dim",
    partitioning.ACT_MLP: "mlp_dim",
    partitioning.HEADS: "heads",
    partitioning.ACT_HEADS: "heads",
    partitioning.KV_HEADS: "kv_heads",
    partitioning.HEAD_DIM: "head_dim",
    partitioning.LAYERS: "layers",
}


def check_mesh(cfg: model_config.ModelConfig, mesh) -> None:
    """UserError naming each ModelConfig dimension the mesh axes it is split over do not
    divide. Found here, before anything is laid out: jax's IndivisibleError would come as
    a trace from the first jit (a fresh start) or from orbax (a resume)."""
    problems = {}
    for logical, field in _SIZED_BY.items():
        axes, ways = partitioning.mesh_split(logical, mesh)
        size = getattr(cfg, field)
        if size % ways:
            axis = " x ".join(axes) + (" axes" if len(axes) > 1 else " axis")
            problems[field, axes] = (
                f"ModelConfig.{field} {size} is not divisible by the mesh's {axis} ({ways})"
            )
    if problems:
        raise UserError(
            f"MESH_SHAPE {tuple(mesh.devices.shape)} does not fit the model: "
            + "; ".join(problems.values())
        )


def check_shapes(cfg, shapes: Shapes, step: ts.StepConfig, mesh) -> None:
    """Raises UserError (one line) for a mesh/batch/sequence/vocabulary/loss chunk that
    cannot work."""
    check_mesh(cfg, mesh)
    b, m = shapes.global_batch_size, int(step.num_microbatches)
    divisor = partitioning.batch_divisor(mesh)
    if b % m:
        raise UserError(f"BATCH_SIZE {b} is not divisible by num_microbatches {m}")
    if (b // m) % divisor:
        raise UserError(
            f"BATCH_SIZE {b} / num_microbatches {m} = {b // m} rows per micro-batch is not "
            f"divisible by the mesh's data x fsdp = {divisor} (MESH_SHAPE "
            f"{tuple(mesh.devices.shape)})"
        )
    if shapes.sequence_length > cfg.max_positions:
        raise UserError(
            f"TASK_FEATURE_LENGTHS give {shapes.sequence_length} tokens per row (inputs + "
            f"targets) but the model's max_positions is {cfg.max_positions}"
        )
    if shapes.vocab_size > cfg.vocab_size:
        raise UserError(
            f"the vocabulary has {shapes.vocab_size} ids but the model's vocab_size is "
            f"{cfg.vocab_size}; use the model's own vocabulary (or, training from "
            "scratch, a larger ModelConfig.vocab_size)"
        )
    length, chunk = shapes.sequence_length, step.loss_chunk_size
    # A chunk that does not split the row into several would compute every logit at once.
    if chunk and not ts.splits_rows(chunk, length):
        raise UserError(
            f"StepConfig.loss_chunk_size {chunk} does not split the {length} tokens per row "
            "(TASK_FEATURE_LENGTHS inputs + targets) into equal chunks: use a divisor of "
            f"{length} smaller than it, or 0 (no chunks: the logits of whole rows)"
        )
