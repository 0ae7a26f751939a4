"""Batched decoding over the KV cache: greedy, beam search (transformers semantics), sampling.

    gen = Generator(cfg, DecodeConfig(method="beam", num_beams=4), eos_id=1, mesh=mesh)
    params = gen.shard_params(params)                     # onto the mesh (no-op without one)
    results = gen.generate(params, prompts, batch_size=32)  # prompts: list of token-id lists
    results[i].tokens                                     # continuation up to the first EOS

`generate` truncates every prompt FROM THE LEFT to `max_prompt_len`, groups prompts into
length buckets (`bucket_lengths`), left-pads each batch to its bucket and fills the last
batch with dummy rows, so every call of the jitted `decode` has one of a few fixed shapes
(one compilation per bucket). Inside, one `lax.while_loop` runs the steps and exits early
once every row is finished.

The low-level function (`Generator.decode_batch`, jitted with the mesh's shardings: batch
over `partitioning.BATCH_MESH_AXES`, parameters by `partitioning.RULES`):

    tokens   int32 [B, P]  prompts, LEFT-padded (padding ids are ignored)
    mask     bool  [B, P]  True on prompt tokens; an all-False row is a dummy row
    row_ids  int32 [B]     sampling stream of each row (sampling is per row, so it does not
                           depend on which rows share a batch)
    -> DecodeOutput(tokens int32 [B, N], lengths int32 [B], scores float32 [B]), N =
       max_new_tokens; tokens after the first EOS are `pad_id`; lengths count the tokens
       before the first EOS; scores: beam -> the finished hypothesis' score, greedy/sample ->
       the sum of the chosen tokens' log-probabilities (EOS included).

Beam search reproduces transformers' `generate(num_beams=W)` (`_beam_search`, 5.x, which
the tests compare with): each step keeps the top 2W of the W x V continuations, a
continuation ending in EOS (or reaching `max_new_tokens`) among the top W becomes a finished
hypothesis with score `sum_logprobs / generated_len ** length_penalty` (generated_len counts
the EOS), the best W finished hypotheses are kept, and `early_stopping` (False:
transformers' heuristic on the current length; True: stop once W are finished; "never":
heuristic on the maximum length) decides when a batch item cannot improve. The prompt is
run once per item and its keys/values are shared by the item's beams (`Decoder(...,
prefix=)`): each step reads them once per item, and reordering beams moves only the
generated tokens' cache. Sampling applies temperature, top-k, then top-p with
transformers' warper definitions.

DecodeConfig's defaults meet the data contract's section 4 (4 beams, no sampling, prompts
cut from the left to 800 tokens, 164 new tokens), not the paper's code token for token: that
pinned transformers 4.27.4, which divided a beam's log-prob sum by the whole sequence length
(the batch's left-padded prompt plus the generated tokens, EOS not counted; changed in
transformers PRs #27351/#27808, late 2023), capped the TOTAL length at 800 + 164 (so a
prompt padded to under 800 could get more than 164 new tokens), and decoded with
clean_up_tokenization_spaces=True.

Needs only jax and flax (no TensorFlow, SeqIO or gin).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ecomgpt_jax import partitioning
from ecomgpt_jax.models import attention, decoder
from ecomgpt_jax.models.config import ModelConfig
from ecomgpt_jax.values import is_integer, is_number

METHODS = ("greedy", "beam", "sample")
# transformers masks finished / impossible candidates by adding this (float32) constant.
NEG = -1.0e9


class DecodeConfigError(ValueError):
    """An unusable decoding setting."""


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to decode. Defaults: the data contract's section 4 (beam scoring: module doc).

    method: "greedy", "beam" or "sample" ("beam" with num_beams=1 is greedy).
    num_beams, length_penalty, early_stopping: beam search only ("sample" draws one
    sequence per prompt; transformers' beam sampling is not implemented).
    length_penalty: exponent of the generated length dividing a finished beam's log-prob.
    early_stopping: False (transformers' default heuristic), True, or "never".
    temperature, top_k (0 = off), top_p (1.0 = off), seed: sampling only.
    max_new_tokens: at most this many generated tokens (EOS included).
    max_prompt_len: prompts longer than this keep their LAST max_prompt_len tokens.
    min_bucket: smallest prompt bucket; buckets double up to max_prompt_len.
    """

    method: str = "beam"
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 164
    max_prompt_len: int = 800
    seed: int = 0
    min_bucket: int = 64

    def __post_init__(self):
        def bad(field, why):
            raise DecodeConfigError(f"DecodeConfig.{field}={getattr(self, field)!r}: {why}")

        # Types first: a float or string gin value would otherwise reach jit as a shape or
        # an operand and fail there, deep in a trace, after the model has loaded.
        for field in ("num_beams", "top_k", "max_new_tokens", "max_prompt_len", "min_bucket"):
            if not is_integer(getattr(self, field)):
                bad(field, "must be an integer")
        if not is_integer(self.seed) or not -(2**31) <= self.seed < 2**31:
            bad("seed", "must be an integer in [-2**31, 2**31)")  # a jax.random key's range
        for field in ("length_penalty", "temperature", "top_p"):
            if not is_number(getattr(self, field)):
                bad(field, "must be a number")
        if self.method not in METHODS:
            bad("method", f"must be one of {METHODS}")
        if self.num_beams < 1:
            bad("num_beams", "must be >= 1")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            bad("early_stopping", "must be True, False or 'never'")  # 1 and 0.0 included
        if not self.temperature > 0:
            bad("temperature", "must be > 0")
        if self.top_k < 0:
            bad("top_k", "must be >= 0 (0 = no top-k filtering)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        for field in ("max_new_tokens", "max_prompt_len", "min_bucket"):
            if getattr(self, field) < 1:
                bad(field, "must be >= 1")

    @property
    def effective_method(self) -> str:
        """transformers runs greedy search for beam search with one beam."""
        return "greedy" if self.method == "beam" and self.num_beams == 1 else self.method


def bucket_lengths(max_prompt_len: int, min_bucket: int = 64) -> tuple[int, ...]:
    """Prompt buckets: min_bucket, 2*min_bucket, ... below max_prompt_len, then max_prompt_len.

    E.g. (800, 64) -> (64, 128, 256, 512, 800).
    """
    out, b = [], int(min_bucket)
    while b < max_prompt_len:
        out.append(b)
        b *= 2
    return (*out, int(max_prompt_len))


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `length` tokens (the last one when none does)."""
    return next((b for b in buckets if length <= b), buckets[-1])


class DecodeOutput(NamedTuple):
    """tokens int32 [B, N], lengths int32 [B], scores float32 [B] (see the module doc)."""

    tokens: Any
    lengths: Any
    scores: Any


@dataclasses.dataclass(frozen=True)
class Result:
    """One prompt's decoded continuation: token ids before the first EOS, and its score."""

    tokens: tuple[int, ...]
    score: float


# ----------------------------------------------------------------------------- token choice


def warp_logits(logits: jax.Array, dcfg: DecodeConfig) -> jax.Array:
    """Temperature, top-k, top-p (transformers' warpers, in that order): [B, V] -> [B, V]
    with removed tokens at -inf."""
    logits = logits.astype(jnp.float32)
    if dcfg.temperature != 1.0:
        logits = logits / dcfg.temperature
    if dcfg.top_k > 0:
        k = min(dcfg.top_k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if dcfg.top_p < 1.0:
        # transformers' TopPLogitsWarper: sort ascending, drop the tokens whose cumulative
        # probability is <= 1 - top_p, always keep the most likely one.
        order = jnp.argsort(logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove = cum <= 1.0 - dcfg.top_p
        remove = remove.at[..., -1].set(False)
        inverse = jnp.argsort(order, axis=-1)
        remove = jnp.take_along_axis(remove, inverse, axis=-1)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def _choose(logits, step, row_ids, seed, dcfg: DecodeConfig):
    """Next token and its log-probability per row: logits [B, V] -> (int32 [B], float32 [B])."""
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if dcfg.effective_method == "sample":
        warped = warp_logits(logits, dcfg)
        base = jax.random.PRNGKey(seed)

        def sample_row(row_id, row_logits):
            key = jax.random.fold_in(jax.random.fold_in(base, row_id), step)
            return jax.random.categorical(key, row_logits)

        token = jax.vmap(sample_row)(row_ids, warped).astype(jnp.int32)
    else:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return token, jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]


# ----------------------------------------------------------------------------- model calls


def _constrain_cache(cache: attention.KVCache) -> attention.KVCache:
    return nn.with_logical_constraint(cache, attention.CACHE_AXES)


def _prefill(model, params, tokens, mask, max_len):
    """Runs the prompts [B, P] into a fresh cache of max_len slots; -> (logits [B, V], cache)."""
    cache = _constrain_cache(attention.init_cache(model.cfg, tokens.shape[0], max_len))
    hidden, cache = model.apply(
        {"params": params},
        tokens,
        segment_ids=mask.astype(jnp.int32),
        cache=cache,
        return_hidden=True,
    )
    # Only the last position's logits are needed: never materialise [B, P, V].
    logits = model.apply(
        {"params": params}, hidden[:, -1], method=decoder.Decoder.logits_from_hidden
    )
    return logits, _constrain_cache(cache)


def _step(model, params, tokens, cache, prefix=None):
    """One new token per row: tokens int32 [B] -> (logits [B, V], cache)."""
    logits, cache = model.apply(
        {"params": params},
        tokens[:, None],
        segment_ids=jnp.ones((tokens.shape[0], 1), jnp.int32),
        cache=cache,
        prefix=prefix,
    )
    return logits[:, 0], _constrain_cache(cache)


# ----------------------------------------------------------------------------- greedy/sample


def _decode_greedy(model, params, tokens, mask, row_ids, seed, dcfg: DecodeConfig, eos_id, pad_id):
    n = dcfg.max_new_tokens
    b = tokens.shape[0]
    logits, cache = _prefill(model, params, tokens, mask, tokens.shape[1] + n)
    done0 = ~mask.any(axis=1)  # dummy rows are finished from the start

    def choose_and_record(state, logits):
        step, cache, out, done, score = state
        token, lp = _choose(logits, step, row_ids, seed, dcfg)
        token = jnp.where(done, pad_id, token)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        score = score + jnp.where(done, 0.0, lp)
        return (step + 1, cache, out, done | (token == eos_id), score)

    out0 = jnp.full((b, n), pad_id, jnp.int32)
    state = choose_and_record(
        (jnp.int32(0), cache, out0, done0, jnp.zeros((b,), jnp.float32)), logits
    )

    def cond(state):
        step, _, _, done, _ = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, cache, out, done, score = state
        last = jax.lax.dynamic_index_in_dim(out, step - 1, axis=1, keepdims=False)
        logits, cache = _step(model, params, last, cache)
        return choose_and_record((step, cache, out, done, score), logits)

    _, _, out, _, score = jax.lax.while_loop(cond, body, state)
    return _finish(out, score, eos_id)


def _finish(out, score, eos_id) -> DecodeOutput:
    is_eos = out == eos_id
    lengths = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), out.shape[1])
    return DecodeOutput(out, lengths.astype(jnp.int32), score)


# ----------------------------------------------------------------------------- beam search


class BeamState(NamedTuple):
    """Beam search loop state. B items, W beams, N = max_new_tokens.

    step: int32 scalar, tokens already in the running sequences.
    cache: KVCache of the generated tokens, B * W rows (item-major: row b * W + w).
    running_seqs / finished_seqs: int32 [B, W, N] generated tokens (pad after the end).
    running_scores: float32 [B, W] summed log-probs of the running beams (best first).
    finished_scores: float32 [B, W] length-penalised scores (NEG: empty slot), best first.
    finished: bool [B, W] whether a finished slot holds a hypothesis.
    open_items: bool [B] transformers' `is_early_stop_heuristic_unsatisfied`.
    all_stopped: bool scalar, every candidate of the last step hit a stopping criterion.
    """

    step: jax.Array
    cache: attention.KVCache
    running_seqs: jax.Array
    running_scores: jax.Array
    finished_seqs: jax.Array
    finished_scores: jax.Array
    finished: jax.Array
    open_items: jax.Array
    all_stopped: jax.Array


def _gather_beams(x, idx):
    """x [B, W, ...], idx int [B, K] -> [B, K, ...] (x[b, idx[b, k]])."""
    return jax.vmap(lambda xb, ib: xb[ib])(x, idx)


def _reorder_beams(cache: attention.KVCache, src) -> attention.KVCache:
    """Row b * W + w of the cache takes the row of beam src[b, w] of item b.

    The cache holds only generated tokens (the prompt is the shared prefix), so this
    moves N slots per row, not P + N.
    """
    b, w = src.shape
    return cache.take((jnp.arange(b, dtype=jnp.int32)[:, None] * w + src).reshape(-1))


def _beam_update(state: BeamState, logprobs, dcfg: DecodeConfig, eos_id) -> BeamState:
    """One transformers beam-search step. logprobs float32 [B, W, V] of the running beams.

    Returns the new state with `cache` reordered to the new running beams (rows of one
    item only move within that item; see `_reorder_beams`).
    """
    b, w, v = logprobs.shape
    n = dcfg.max_new_tokens
    k = 2 * w  # transformers keeps (1 + number of EOS ids) * W candidates, at least 2 * W
    t = state.step
    lp = dcfg.length_penalty

    acc = (logprobs + state.running_scores[:, :, None]).reshape(b, w * v)
    cand_scores, cand_idx = jax.lax.top_k(acc, k)  # [B, K], best first
    src_beam = (cand_idx // v).astype(jnp.int32)
    cand_tokens = (cand_idx % v).astype(jnp.int32)
    cand_seqs = _gather_beams(state.running_seqs, src_beam)
    cand_seqs = jax.lax.dynamic_update_slice(cand_seqs, cand_tokens[:, :, None], (0, 0, t))
    stopped = (cand_tokens == eos_id) | (t + 1 >= n)

    # The best W candidates that did not stop keep running.
    run_scores = cand_scores + stopped.astype(jnp.float32) * NEG
    keep = jax.lax.top_k(run_scores, w)[1]
    running_seqs = _gather_beams(cand_seqs, keep)
    running_scores = _gather_beams(run_scores, keep)
    running_src = _gather_beams(src_beam, keep)

    # Stopped candidates among the top W may enter the finished set (best W kept).
    just_finished = stopped & (jnp.arange(k) < w)[None, :]
    fin_scores = cand_scores / ((t + 1).astype(jnp.float32) ** lp)
    if dcfg.early_stopping is True:
        full = jnp.all(state.finished, axis=-1, keepdims=True)
        fin_scores = fin_scores + full.astype(jnp.float32) * NEG
    fin_scores = fin_scores + (~state.open_items[:, None]).astype(jnp.float32) * NEG
    fin_scores = fin_scores + (~just_finished).astype(jnp.float32) * NEG
    merged_scores = jnp.concatenate([state.finished_scores, fin_scores], axis=1)
    best = jax.lax.top_k(merged_scores, w)[1]
    finished_scores = _gather_beams(merged_scores, best)
    finished_seqs = _gather_beams(jnp.concatenate([state.finished_seqs, cand_seqs], 1), best)
    finished = _gather_beams(jnp.concatenate([state.finished, just_finished], 1), best)

    # Can a running beam still beat the worst finished one? (transformers' heuristic)
    if dcfg.early_stopping == "never" and lp > 0.0:
        best_len = jnp.float32(n)
    else:
        best_len = (t + 1).astype(jnp.float32)
    best_possible = running_scores[:, :1] / best_len**lp
    worst = jnp.where(finished, jnp.min(finished_scores, axis=1, keepdims=True), NEG)
    open_items = state.open_items & jnp.any(best_possible > worst, axis=-1)
    if dcfg.early_stopping is True:
        open_items = open_items & ~jnp.all(finished, axis=-1)

    cache = _reorder_beams(state.cache, running_src)
    return BeamState(
        step=t + 1,
        cache=_constrain_cache(cache),
        running_seqs=running_seqs,
        running_scores=running_scores,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        finished=finished,
        open_items=open_items,
        all_stopped=jnp.all(stopped),
    )


def _decode_beam(model, params, tokens, mask, dcfg: DecodeConfig, eos_id, pad_id):
    n, w = dcfg.max_new_tokens, dcfg.num_beams
    b = tokens.shape[0]
    # The prompt is run once per item and stays a prefix shared by the item's W beams
    # (read once per item per step); the cache of B * W rows (item-major: row b * W + w)
    # holds only the generated tokens, so reordering beams moves only those.
    logits, prefix = _prefill(model, params, tokens, mask, tokens.shape[1])
    cache = _constrain_cache(attention.init_cache(model.cfg, b * w, n))
    valid = mask.any(axis=1)
    seqs = jnp.full((b, w, n), pad_id, jnp.int32)
    # Only beam 0 is live at first, so the W copies of the first logits do not fill the beams.
    running_scores = jnp.where(jnp.arange(w) == 0, 0.0, NEG)[None, :].repeat(b, 0)
    state = BeamState(
        step=jnp.int32(0),
        cache=cache,
        running_seqs=seqs,
        running_scores=running_scores.astype(jnp.float32),
        finished_seqs=seqs,
        finished_scores=jnp.full((b, w), NEG, jnp.float32),
        finished=jnp.zeros((b, w), bool),
        open_items=valid,  # dummy rows never hold the loop
        all_stopped=jnp.bool_(False),
    )
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    state = _beam_update(state, jnp.repeat(logprobs[:, None], w, axis=1), dcfg, eos_id)

    def cond(s: BeamState):
        return (s.step < n) & jnp.any(s.open_items) & ~s.all_stopped

    def body(s: BeamState):
        last = s.running_seqs[:, :, s.step - 1].reshape(-1)
        logits, cache = _step(model, params, last, s.cache, prefix)
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, w, -1)
        return _beam_update(s._replace(cache=cache), logprobs, dcfg, eos_id)

    state = jax.lax.while_loop(cond, body, state)
    out = jnp.where(valid[:, None], state.finished_seqs[:, 0], pad_id)
    return _finish(out, state.finished_scores[:, 0], eos_id)


def decode(
    params, tokens, mask, row_ids, seed, *, cfg: ModelConfig, dcfg: DecodeConfig, eos_id, pad_id
):
    """The jittable decoding function (see the module docstring for shapes; seed: int32
    scalar, a traced value so that a new seed does not recompile)."""
    model = decoder.Decoder(cfg)
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.asarray(mask, bool)
    if dcfg.effective_method == "beam":
        return _decode_beam(model, params, tokens, mask, dcfg, eos_id, pad_id)
    return _decode_greedy(model, params, tokens, mask, row_ids, seed, dcfg, eos_id, pad_id)


# ----------------------------------------------------------------------------- host side


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
    """Left-pads token lists to `length`: -> (tokens int32 [B, L], mask bool [B, L])."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than {length}")
        if len(p):
            tokens[i, length - len(p) :] = p
            mask[i, length - len(p) :] = True
    return tokens, mask


def _put(x: np.ndarray, sharding):
    """A host array (identical on every process) as a global array with `sharding`."""
    if sharding is None:
        return jnp.asarray(x)
    if isinstance(x, jax.Array):
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _fetch(tree):
    """Global arrays -> numpy on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def param_shardings(cfg: ModelConfig, mesh: Mesh | None):
    """NamedShardings of the parameter tree by `partitioning.RULES` (the first device
    when mesh is None)."""
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda _: one, decoder.abstract_params(cfg))
    specs = nn.get_partition_spec(decoder.abstract_params(cfg, boxed=True))
    return partitioning.logical_sharding(specs, mesh)


@functools.lru_cache(maxsize=32)
def _jit_decode(cfg: ModelConfig, dcfg: DecodeConfig, eos_id: int, pad_id: int, mesh):
    """One jitted `decode` per setting (the seed is an argument, not part of the key), so
    Generators with equal settings share compilations (one per bucket and batch size)."""
    fn = functools.partial(decode, cfg=cfg, dcfg=dcfg, eos_id=eos_id, pad_id=pad_id)
    if mesh is None:
        return jax.jit(fn)
    data = partitioning.data_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    out = data  # rows stay where their prompts were
    return jax.jit(
        fn,
        in_shardings=(param_shardings(cfg, mesh), data, data, data, replicated),
        out_shardings=DecodeOutput(out, out, out),
    )


class Generator:
    """Jitted decoding of one model with one DecodeConfig, optionally on a mesh.

    eos_id: the vocabulary's end-of-sequence id (decoding stops there). pad_id: the id
    written after the end and used for left padding.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        dcfg: DecodeConfig,
        eos_id: int,
        pad_id: int = 0,
        mesh: Mesh | None = None,
    ):
        self.cfg, self.dcfg, self.mesh = cfg, dcfg, mesh
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.buckets = bucket_lengths(dcfg.max_prompt_len, dcfg.min_bucket)
        self.param_shardings = param_shardings(cfg, mesh) if mesh is not None else None
        self._data_sharding = None if mesh is None else partitioning.data_sharding(mesh)
        key = dataclasses.replace(dcfg, seed=0)  # the seed is passed at run time
        self._jitted = _jit_decode(cfg, key, self.eos_id, self.pad_id, mesh)

    @property
    def batch_divisor(self) -> int:
        """Batch sizes must be multiples of this (data x fsdp)."""
        return 1 if self.mesh is None else partitioning.batch_divisor(self.mesh)

    def shard_params(self, params):
        """Places a param tree (numpy or jax) onto the mesh."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, params)
        return jax.tree.map(_put, params, self.param_shardings)

    def decode_batch(self, params, tokens, mask, row_ids) -> DecodeOutput:
        """One jitted call on host arrays (see the module docstring); returns numpy."""
        args = [
            _put(np.asarray(a, dt), self._data_sharding)
            for a, dt in ((tokens, np.int32), (mask, bool), (row_ids, np.int32))
        ]
        replicated = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())
        args.append(_put(np.asarray(self.dcfg.seed, np.int32), replicated))
        if self.mesh is None:
            return DecodeOutput(*_fetch(self._jitted(params, *args)))
        with jax.set_mesh(self.mesh), partitioning.axis_rules():
            out = self._jitted(params, *args)
        return DecodeOutput(*_fetch(out))

    def generate(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        batch_size: int,
        row_ids: Sequence[int] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Result]:
        """Decodes every prompt (token ids, no padding); results in the order of `prompts`.

        Prompts are cut to their last `max_prompt_len` tokens. batch_size is rounded up to a
        multiple of `batch_divisor`. row_ids (default 0..n-1) seed each prompt's sampling.
        on_batch(number of real prompts in the batch) is called after each batch.
        """
        batch_size = -(-max(int(batch_size), 1) // self.batch_divisor) * self.batch_divisor
        row_ids = list(range(len(prompts))) if row_ids is None else list(row_ids)
        limit = self.dcfg.max_prompt_len
        cut = [list(p)[-limit:] for p in prompts]
        for i, p in enumerate(cut):
            if not p:
                raise ValueError(f"prompt {i} is empty: nothing to condition on")
        by_bucket: dict[int, list[int]] = {}
        for i, p in enumerate(cut):
            by_bucket.setdefault(bucket_for(len(p), self.buckets), []).append(i)
        results: list[Result | None] = [None] * len(prompts)
        for bucket in sorted(by_bucket):
            order = by_bucket[bucket]
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                rows = [cut[i] for i in chunk] + [[]] * (batch_size - len(chunk))
                tokens, mask = left_pad(rows, bucket, self.pad_id)
                ids = np.zeros(batch_size, np.int32)
                ids[: len(chunk)] = [row_ids[i] for i in chunk]
                out = self.decode_batch(params, tokens, mask, ids)
                for j, i in enumerate(chunk):
                    n = int(out.lengths[j])
                    results[i] = Result(
                        tuple(int(x) for x in out.tokens[j, :n]), float(out.scores[j])
                    )
                if on_batch is not None:
                    on_batch(len(chunk))
        return results  # type: ignore[return-value]
