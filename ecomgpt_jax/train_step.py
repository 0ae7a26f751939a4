"""Train state, the answer-token loss, the AdamW schedule, gradient accumulation and
the held-out (evaluation) loss.

One optimisation step sees a *global* batch of packed sequences (all arrays
`[batch, length]`, the SeqIO decoder feature names):

    decoder_input_tokens   int32  tokens fed to the model (each example's prompt + answer)
    decoder_target_tokens  int32  next-token targets (0 after an example's last token)
    decoder_loss_weights   float  1 on answer tokens, 0 on prompt tokens and padding
    decoder_segment_ids    int32  which packed example a token belongs to (0 = padding)
    decoder_positions      int32  position of the token inside its example

The loss is the mean cross-entropy over the answer tokens of the WHOLE global
batch: sum of token losses / number of answer tokens. Micro-batches only split
the work; they never re-weight examples (a micro-batch with few answer tokens
counts exactly as much as those tokens). This makes the update independent of
the accumulation count and of the mesh.

Needs only jax, flax and optax (no TensorFlow, SeqIO or gin).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from ecomgpt_jax import partitioning
from ecomgpt_jax.models import losses
from ecomgpt_jax.models.config import ConfigError
from ecomgpt_jax.values import is_integer, is_number

Batch = Mapping[str, jax.Array]
PyTree = Any

INPUTS = "decoder_input_tokens"
TARGETS = "decoder_target_tokens"
WEIGHTS = "decoder_loss_weights"
SEGMENT_IDS = "decoder_segment_ids"
POSITIONS = "decoder_positions"
BATCH_KEYS = (INPUTS, TARGETS, WEIGHTS, SEGMENT_IDS, POSITIONS)
EVAL_SUMS = ("loss_sum", "weight_sum", "correct_sum")  # what make_eval_step returns


DECAYS = ("cosine", "linear", "constant")  # OptimizerConfig.decay


def field_error(config, field: str, why: str, macro: str | None = None) -> ConfigError:
    """One line in ModelConfig's style, `<Config>.<field>=<value> (<MACRO>): <why>`; the
    macro is the one gin_configs/ecom.gin binds the field to."""
    where = f" ({macro})" if macro else ""
    value = getattr(config, field)
    return ConfigError(f"{type(config).__name__}.{field}={value!r}{where}: {why}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine / linear / constant decay, and clipping.

    `final_lr_ratio`, as a fraction of `learning_rate`, is where the decay ends: the
    schedule reaches it at step `total_steps`. Update number s (1-based) uses the
    schedule at s - 1, so the last update uses `schedule(total_steps - 1)`, one decay
    step short of it (metrics.jsonl logs the rate each logged step used). Weight decay
    never applies to biases and normalisation parameters (see `decay_mask`).
    """

    learning_rate: float = 2e-5
    warmup_steps: int = 0
    decay: str = "cosine"  # "cosine" | "linear" | "constant"
    final_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 or less: no clipping

    def __post_init__(self):
        def bad(field, why, macro=None):
            raise field_error(self, field, why, macro)

        if not is_number(self.learning_rate) or self.learning_rate <= 0:
            bad("learning_rate", "must be a number > 0", "LEARNING_RATE")
        if not is_integer(self.warmup_steps) or self.warmup_steps < 0:
            bad("warmup_steps", "must be an integer >= 0", "WARMUP_STEPS")
        if self.decay not in DECAYS:
            bad("decay", f"must be one of {DECAYS}")
        if not is_number(self.final_lr_ratio) or not 0 <= self.final_lr_ratio <= 1:
            bad("final_lr_ratio", "must be a number from 0 to 1")
        for field in ("b1", "b2"):
            if not is_number(getattr(self, field)) or not 0 <= getattr(self, field) < 1:
                bad(field, "must be a number >= 0 and < 1")
        for field in ("eps", "weight_decay"):
            if not is_number(getattr(self, field)) or getattr(self, field) < 0:
                bad(field, "must be a number >= 0")
        if not is_number(self.max_grad_norm):
            bad("max_grad_norm", "must be a number (0 or less: no clipping)")


def splits_rows(loss_chunk_size: int, length: int) -> bool:
    """Whether a loss chunk of `loss_chunk_size` positions splits rows of `length`
    tokens into several equal chunks (what the chunked loss needs; 0 is no chunking)."""
    return 0 < loss_chunk_size < length and length % loss_chunk_size == 0


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How one global batch is turned into one update.

    `num_microbatches` splits the global batch into that many micro-batches
    whose gradients are summed with `lax.scan` (activation memory of one
    micro-batch). `loss_chunk_size` > 0 fuses the vocabulary projection and the
    cross-entropy (`models/losses.py`), when the model can return its final hidden
    states: logits are computed for loss-weighted positions only, that many per
    row at a time, and never all at once. It must then divide the row length and be
    smaller (`run_config.check_shapes` says so at set-up; `loss_sums` raises otherwise).
    0: the logits of whole rows, [batch, length, vocab] at once.
    """

    num_microbatches: int = 1
    loss_chunk_size: int = 0

    def __post_init__(self):
        if not is_integer(self.num_microbatches) or self.num_microbatches < 1:
            raise field_error(
                self, "num_microbatches", "must be an integer >= 1", "NUM_MICROBATCHES"
            )
        if not is_integer(self.loss_chunk_size) or self.loss_chunk_size < 0:
            raise field_error(self, "loss_chunk_size", "must be an integer >= 0")


class TrainState(struct.PyTreeNode):
    """Everything that changes during training (all of it is checkpointed).

    step: int32 scalar, number of updates applied.
    params: the model parameters (plain arrays, logical boxes removed).
    opt_state: the optax state for `params`.
    rng: PRNG key data (uint32 [2]), split per step and micro-batch and passed as the
      "dropout" stream: reserved, as no model here has a stochastic layer yet (the
      HF configs of BLOOM, Llama and Qwen2 set their dropout to 0).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then the chosen decay, which reaches
    `final_lr_ratio` at `total_steps` (the last update uses `total_steps - 1`)."""
    peak = config.learning_rate
    warmup = max(int(config.warmup_steps), 0)
    decay_steps = max(int(total_steps) - warmup, 1)
    end = peak * config.final_lr_ratio
    if config.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.final_lr_ratio)
    elif config.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif config.decay == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(
            f"OptimizerConfig.decay: unknown schedule {config.decay!r}; "
            "use 'cosine', 'linear' or 'constant'"
        )
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


# A parameter is exempt from weight decay when it is a bias (`bias`, `qkv_bias`,
# `out_bias`, ...) or a gain, or lives in a normalisation module (`final_norm`,
# `attn_norm`, ...): decaying LayerNorm/RMSNorm gains and biases only pulls them
# towards 0 (the usual BERT/GPT/BLOOM fine-tuning recipe excludes them).
_NORM_MODULE = re.compile(r"norm|(^|_)ln(_|$)", re.IGNORECASE)


def _no_decay_leaf(name: str) -> bool:
    return name in ("bias", "scale") or name.endswith("_bias")


def path_names(path) -> list[str]:
    """A pytree key path (dict keys, attributes, sequence indices) as plain names."""
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        names.append(str(name))
    return names


def decay_mask(params: PyTree) -> PyTree:
    """Tree of bools like `params`: True where weight decay applies.

    Works on plain and on logically boxed parameters (a box is one leaf).
    """

    def keep(path, _):
        names = path_names(path)
        names = [n for n in names if n != "value"]  # flax boxes add a "value" field
        if not names:
            return True
        if _no_decay_leaf(names[-1]):
            return False
        return not any(_NORM_MODULE.search(n) for n in names[:-1])

    return jax.tree_util.tree_map_with_path(
        keep, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW on the schedule (decay masked by path)."""
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.max_grad_norm and config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)


# ----------------------------------------------------------------------------- loss


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in float32.

    logits: [..., vocab] (any float dtype); targets: int [...]. Returns float32 [...].
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return log_z - picked


def _model_kwargs(batch: Batch) -> dict:
    return {
        "positions": batch.get(POSITIONS),
        "segment_ids": batch.get(SEGMENT_IDS),
    }


def _model_supports_hidden(model: nn.Module) -> bool:
    return hasattr(model, "logits_from_hidden")


def loss_sums(
    params: PyTree,
    batch: Batch,
    model: nn.Module,
    config: StepConfig,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum of answer-token losses of `batch` (not a mean: the caller divides once).

    batch: the `BATCH_KEYS` arrays, each [B, L] (a micro-batch's B); `config.loss_chunk_size`
    > 0 must divide L and be smaller (ValueError otherwise: computing all [B, L, V] logits
    instead would silently break the memory plan the chunk size was chosen for).
    Returns (loss_sum float32 scalar, {"weight_sum", "correct_sum"} float32 scalars).
    """
    weights = batch[WEIGHTS].astype(jnp.float32)
    targets = batch[TARGETS]
    rngs = {"dropout": rng} if rng is not None else None
    chunk = int(config.loss_chunk_size)
    length = targets.shape[1]
    if chunk > 0 and not splits_rows(chunk, length):
        raise ValueError(
            f"StepConfig.loss_chunk_size {chunk} does not split rows of {length} tokens "
            "into equal chunks"
        )
    if chunk > 0 and _model_supports_hidden(model):
        hidden = model.apply(
            {"params": params}, batch[INPUTS], return_hidden=True, rngs=rngs, **_model_kwargs(batch)
        )
        loss_sum, correct = _chunked_loss(params, model, hidden, targets, weights, chunk)
    else:
        logits = model.apply({"params": params}, batch[INPUTS], rngs=rngs, **_model_kwargs(batch))
        token_loss = token_cross_entropy(logits, targets)
        loss_sum = jnp.sum(token_loss * weights)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    return loss_sum, {"weight_sum": jnp.sum(weights), "correct_sum": correct}


def _chunked_loss(params, model, hidden, targets, weights, chunk):
    """Vocabulary projection + cross-entropy over chunks of loss-weighted positions.

    hidden: [B, L, E]; targets, weights: [B, L]. Only one chunk's [B, chunk, vocab]
    float32 logits exist at a time (250k-token vocabularies), and only positions with
    loss weight get logits. `models.losses` fuses the head and the loss with a custom
    gradient: each chunk's logits are computed once, not recomputed in the backward.
    """
    w, vocab_major = losses.head_weights(model.cfg, params)
    return losses.chunked_cross_entropy(
        hidden, w, targets, weights, chunk, vocab_major, model.cfg.logits_dtype
    )


# ----------------------------------------------------------------------------- step


def _mesh_has_batch_axes() -> bool:
    """True inside `jax.set_mesh(mesh)` for a mesh with the batch axes."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and set(partitioning.BATCH_MESH_AXES) <= set(mesh.axis_names)


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[B, ...] -> [M, B/M, ...] with micro-batch m = rows m, m+M, m+2M, ...

    Strided rather than contiguous rows so that each micro-batch stays spread
    over every data/fsdp shard of the batch dimension (a contiguous slice would
    live on 1/M of the devices).
    """

    def split(x):
        b = x.shape[0]
        y = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
        y = jnp.swapaxes(y, 0, 1)
        if _mesh_has_batch_axes():
            spec = PartitionSpec(None, partitioning.BATCH_MESH_AXES)
            y = jax.lax.with_sharding_constraint(y, spec)
        return y

    return {k: split(v) for k, v in batch.items()}


def _real_tokens(batch: Batch) -> jax.Array:
    if SEGMENT_IDS in batch:
        return jnp.sum(batch[SEGMENT_IDS] > 0).astype(jnp.float32)
    return jnp.float32(batch[INPUTS].size)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: StepConfig,
    param_shardings: PyTree | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns `step(state, batch) -> (state, metrics)` (not jitted; see `jit_train_step`).

    metrics (float32 scalars): loss (mean over the global batch's answer tokens),
    grad_norm (before clipping), answer_tokens, tokens (non-padding), accuracy
    (next-token argmax accuracy on answer tokens).
    `param_shardings` pins the gradient accumulator to the parameter layout.
    """
    m = int(config.num_microbatches)

    def grads_of(params, batch, rng):
        def f(p):
            return loss_sums(p, batch, model, config, rng)

        return jax.value_and_grad(f, has_aux=True)(params)

    def step(state: TrainState, batch: Batch):
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        total_weight = jnp.sum(batch[WEIGHTS].astype(jnp.float32))
        if m <= 1:
            (loss_sum, aux), grads = grads_of(state.params, batch, step_rng)
            correct = aux["correct_sum"]
        else:
            micro = split_microbatches(batch, m)
            rngs = jax.random.split(step_rng, m)

            def body(carry, xs):
                acc, loss_acc, correct_acc = carry
                mb, r = xs
                (loss, aux), g = grads_of(state.params, mb, r)
                acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g)
                return (acc, loss_acc + loss, correct_acc + aux["correct_sum"]), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            if param_shardings is not None:
                zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)
            zero = jnp.zeros((), jnp.float32)
            (grads, loss_sum, correct), _ = jax.lax.scan(body, (zeros, zero, zero), (micro, rngs))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        # Divide once by the answer tokens of the whole global batch, so that a token
        # weighs the same whatever micro-batch (and however many answers) it came with.
        denom = jnp.maximum(total_weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=jax.random.key_data(rng),
        )
        metrics = {
            "loss": loss_sum / denom,
            "grad_norm": grad_norm,
            "answer_tokens": total_weight,
            "tokens": _real_tokens(batch),
            "accuracy": correct / denom,
        }
        return new_state, metrics

    return step


def make_eval_step(
    model: nn.Module, config: StepConfig
) -> Callable[[PyTree, Batch], dict[str, jax.Array]]:
    """Returns `eval_step(params, batch) -> sums` (not jitted; see `jit_eval_step`).

    sums (float32 scalars): loss_sum, weight_sum (answer tokens) and correct_sum over
    the batch: the teacher-forced loss without gradients, summed so that several
    batches combine into one token-weighted mean (loss_sum / weight_sum), as the
    train step's loss. Split into `config.num_microbatches` like the train step.
    """
    m = int(config.num_microbatches)

    def sums_of(params, batch):
        loss_sum, aux = loss_sums(params, batch, model, config)
        return {"loss_sum": loss_sum, **aux}

    def eval_step(params, batch):
        if m <= 1:
            return sums_of(params, batch)

        def body(acc, mb):
            return jax.tree.map(jnp.add, acc, sums_of(params, mb)), None

        acc = {k: jnp.zeros((), jnp.float32) for k in EVAL_SUMS}
        return jax.lax.scan(body, acc, split_microbatches(batch, m))[0]

    return eval_step


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The abstract train state and its shardings on one mesh.

    abstract: TrainState of jax.ShapeDtypeStruct (with `.sharding` set).
    shardings: TrainState of NamedSharding.
    """

    abstract: TrainState
    shardings: TrainState


def _strip_boxes(tree: PyTree) -> PyTree:
    """Removes flax's logical-axis boxes (no sharding constraint applied)."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )


# The token batch [B, L] the parameters are initialised with: their shapes do not depend
# on it, so the smallest that every model takes.
_INIT_TOKENS_SHAPE = (1, 8)


def _state_from(tx, params, rng) -> TrainState:
    """Step 0 with `params` and fresh optimizer moments (boxed params give boxed moments)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(rng),
    )


def _boxed_state(model, tx, rng):
    tokens = jnp.zeros(_INIT_TOKENS_SHAPE, jnp.int32)
    return _state_from(tx, model.init(rng, tokens)["params"], rng)


def state_layout(
    model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> StateLayout:
    """Shapes and shardings of the train state from the model's logical axis names.

    The optimizer moments inherit their parameter's logical names because
    `tx.init` runs on the logically boxed parameters.
    """
    boxed = jax.eval_shape(lambda r: _boxed_state(model, tx, r), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    shardings = partitioning.logical_sharding(specs, mesh)
    plain = _strip_boxes(boxed)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, shardings
    )
    return StateLayout(abstract=abstract, shardings=shardings)


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    layout: StateLayout,
    seed: int,
    params: PyTree | None = None,
) -> TrainState:
    """A fresh train state, created directly in its sharded layout.

    `params`, when given (e.g. loaded from a HF folder), replace the random
    initialisation; they are resharded to the layout and the optimizer state is
    initialised from them.
    """

    def fresh(rng):
        return nn.meta.unbox(_boxed_state(model, tx, rng))

    def from_params(rng, p):
        return _state_from(tx, p, rng)

    key = jax.random.key(seed)
    with partitioning.axis_rules():
        if params is None:
            return jax.jit(fresh, out_shardings=layout.shardings)(key)
        params = jax.device_put(params, layout.shardings.params)
        return jax.jit(from_params, out_shardings=layout.shardings)(key, params)


def jit_train_step(
    step_fn: Callable,
    layout: StateLayout,
    batch_sharding: NamedSharding,
) -> Callable:
    """`jax.jit` with the state/batch shardings; the input state is donated."""
    metric_sharding = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(layout.shardings, batch_sharding),
        out_shardings=(layout.shardings, metric_sharding),
        donate_argnums=(0,),
    )


def jit_eval_step(
    eval_fn: Callable, layout: StateLayout, batch_sharding: NamedSharding
) -> Callable:
    """`jax.jit` of `make_eval_step`'s function with the params/batch shardings."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        eval_fn,
        in_shardings=(layout.shardings.params, batch_sharding),
        out_shardings=replicated,
    )
