"""Fused LM-head + cross-entropy over chunks of answer positions (no full logits).

    loss_sum, correct_sum = chunked_cross_entropy(hidden, w, targets, weights, chunk)
        hidden   [B, L, D]  final-norm hidden states (compute dtype, e.g. bfloat16)
        w        the LM head: `embed/embedding` [V, D] (tied) or `lm_head/kernel` [D, V];
                 `head_weights(cfg, params)` returns the right one with its layout
        targets  int [B, L];  weights float [B, L] (0 = no loss)
        chunk    positions per chunk (of each row's weighted positions); must divide L
        -> loss_sum   float32 scalar: sum of weights * (logsumexp(logits) - logits[target])
           correct_sum float32 scalar: sum of weights * (argmax(logits) == target)

Logits of one chunk are float32 [B, chunk, V], computed like `Decoder.logits_from_hidden`
(w cast to the hidden dtype, float32 accumulation, written in `logits_dtype`). BLOOM's
250k vocabulary makes the full float32 logits of a 8 x 2048 batch 16 GB; here only one
chunk is live.

Why a custom VJP: the loss is a sum, so d loss / d logits = weights * (softmax - onehot)
is known as soon as a chunk's logits are. The forward pass therefore computes, per chunk,
the logits once and both gradient products (d hidden = dlogits @ w^T, d w += dlogits^T
@ hidden) while the chunk is at hand, and the backward pass only scales them by the
incoming cotangent. Autodiff with `jax.checkpoint` (the alternative) recomputes the
[B, chunk, V] logits in the backward pass: one more LM-head matmul (+1/3 of its FLOPs)
and two more passes over the logits. Evaluation (no gradient) runs the loss-only primal.

Why compaction: instruction tuning weights only answer tokens (about a tenth of a
packed EcomInstruct row), and a position of weight 0 adds nothing to the loss or to
any gradient. Each row's weighted positions are therefore moved to its front (a
per-row permutation, so the batch sharding is untouched) and a chunk is evaluated
only while some row still has weighted positions in it: the LM head's cost (a third
of BLOOM-1b1's training FLOPs) follows the answer tokens, not the sequence length.
`targets` and `weights` are data and get no gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ecomgpt_jax import partitioning as P
from ecomgpt_jax.models.config import ModelConfig
from ecomgpt_jax.models.layers import constrain, dot, head_logits

LOGIT_AXES = (P.BATCH, P.LENGTH, P.ACT_VOCAB)


def head_weights(cfg: ModelConfig, params) -> tuple[jax.Array, bool]:
    """(w, vocab_major): the tied embedding [V, D] (True) or the untied kernel [D, V]."""
    if cfg.tie_embeddings:
        return params["embed"]["embedding"], True
    return params["lm_head"]["kernel"], False


def _logits(h, w, vocab_major, logits_dtype):
    """h [B, C, D] -> float32 [B, C, V]."""
    spec = "bcd,vd->bcv" if vocab_major else "bcd,dv->bcv"
    logits = head_logits(spec, h, w.astype(h.dtype), logits_dtype)
    return constrain(logits, LOGIT_AXES)


def _compact(hidden, targets, weights):
    """Move each row's weighted positions to its front (in order); count the chunks' work.

    -> (hidden, targets, weights) permuted along L, `order` int [B, L] (compacted slot ->
    original position) and `needed` int32 scalar: the most weighted positions in a row.
    A per-row permutation keeps the batch axis (and its sharding) where it is.
    """
    # Sort keys 0 (weighted) before 1; int32 keys keep it the plain numeric sort.
    order = jnp.argsort((weights == 0).astype(jnp.int32), axis=1, stable=True)
    needed = jnp.max(jnp.sum(weights != 0, axis=1)).astype(jnp.int32)

    def take(x):
        return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)

    return take(hidden), take(targets), take(weights), order, needed


def _chunks(hidden, targets, weights, chunk):
    """[B, L, ...] -> [n, B, chunk, ...]: the batch axis (and its sharding) stays put."""
    b, length = targets.shape
    n = length // chunk

    def split(x):
        return x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)

    return split(hidden), split(targets), split(weights)


def _chunk_stats(logits, t, w):
    """Per-token losses [B, C], the chunk's correct sum, and exp(logits - max), its sum."""
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    token_loss = m[..., 0] + jnp.log(s[..., 0]) - picked
    # argmax(logits) == t (first maximum wins, as jnp.argmax) without argmax's
    # index-carrying reduction, which XLA:CPU runs far slower than a plain sum.
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    earlier_max = jnp.sum((logits == m) & (vocab_ids < t[..., None]), axis=-1)
    is_argmax = (picked == m[..., 0]) & (earlier_max == 0)
    correct = jnp.sum(is_argmax * w)
    return token_loss, correct, e, s


def _check(hidden, targets, weights, chunk):
    if targets.shape != hidden.shape[:2] or weights.shape != targets.shape:
        raise ValueError(
            f"chunked_cross_entropy: hidden {hidden.shape}, targets {targets.shape} and "
            f"weights {weights.shape} must share [batch, length]"
        )
    if chunk <= 0 or targets.shape[1] % chunk:
        raise ValueError(f"chunked_cross_entropy: chunk {chunk} must divide {targets.shape[1]}")


def _head_for_loop(w, dtype, vocab_major):
    """The head weights in the compute dtype, gathered over fsdp (the embedding axis)
    once, before the chunk loop. Inside the loop's `cond` XLA would not hoist the
    gather: an FSDP run would all-gather the [V, D] head again for every chunk."""
    axes = (P.VOCAB, None) if vocab_major else (None, P.VOCAB)
    return constrain(w.astype(dtype), axes)


def _skip_idle_chunks(body, zeros, needed, chunk):
    """Scan body that runs `body` on chunk k only if slot k * chunk holds a weighted
    position in some row (after `_compact` the rest of the chunks are all weight 0)."""

    def run(carry, xs):
        k, xs = xs
        return jax.lax.cond(k * chunk < needed, body, lambda c, _: (c, zeros), carry, xs)

    return run


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused(hidden, w, targets, weights, chunk, vocab_major, logits_dtype):
    hidden, targets, weights, _, needed = _compact(hidden, targets, weights)
    hs, ts, ws = _chunks(hidden, targets, weights, chunk)
    w = _head_for_loop(w, hidden.dtype, vocab_major)

    def body(carry, xs):
        h, t, wt = xs
        token_loss, correct, _, _ = _chunk_stats(_logits(h, w, vocab_major, logits_dtype), t, wt)
        return (carry[0] + jnp.sum(token_loss * wt), carry[1] + correct), None

    zero = jnp.zeros((), jnp.float32)
    run = _skip_idle_chunks(body, None, needed, chunk)
    (loss, correct), _ = jax.lax.scan(run, (zero, zero), (jnp.arange(len(ts)), (hs, ts, ws)))
    return loss, correct


def _fused_fwd(hidden, w, targets, weights, chunk, vocab_major, logits_dtype):
    b, length, d = hidden.shape
    vocab = w.shape[0] if vocab_major else w.shape[1]
    packed, targets, weights, order, needed = _compact(hidden, targets, weights)
    hs, ts, ws = _chunks(packed, targets, weights, chunk)
    w_dtype = w.dtype
    w = _head_for_loop(w, hidden.dtype, vocab_major)

    def body(carry, xs):
        loss_acc, correct_acc, dw = carry
        h, t, wt = xs
        logits = _logits(h, w, vocab_major, logits_dtype)
        token_loss, correct, e, s = _chunk_stats(logits, t, wt)
        # d(sum w * CE)/d logits, in the compute dtype for the two matmuls below.
        dlogits = (e / s - jax.nn.one_hot(t, vocab, dtype=e.dtype)) * wt[..., None]
        dlogits = constrain(dlogits.astype(h.dtype), LOGIT_AXES)
        spec = "bcv,vd->bcd" if vocab_major else "bcv,dv->bcd"
        dh = dot(spec, dlogits, w)
        # d w is accumulated as [D, V] whatever w's layout: the [B, chunk, V] dlogits
        # are then the matmul's row-major right operand (no transposed copy per chunk).
        dw_c = dot("bcd,bcv->dv", h, dlogits, jnp.float32)
        carry = (loss_acc + jnp.sum(token_loss * wt), correct_acc + correct, dw + dw_c)
        return carry, dh

    zero = jnp.zeros((), jnp.float32)
    # The accumulator is laid out like the head weights (fsdp x tensor on a mesh).
    dw0 = constrain(jnp.zeros((d, vocab), jnp.float32), (P.EMBED, P.VOCAB))
    idle_dh = jnp.zeros((b, chunk, d), hidden.dtype)
    run = _skip_idle_chunks(body, idle_dh, needed, chunk)
    (loss, correct, dw), dhs = jax.lax.scan(
        run, (zero, zero, dw0), (jnp.arange(len(ts)), (hs, ts, ws))
    )
    if vocab_major:
        dw = dw.T
    # Back from compacted slots to sequence positions: the inverse permutation.
    dpacked = dhs.swapaxes(0, 1).reshape(b, length, d)
    back = jnp.argsort(order, axis=1)
    dhidden = jnp.take_along_axis(dpacked, back[..., None], axis=1)
    return (loss, correct), (dhidden, dw.astype(w_dtype))


def _fused_bwd(chunk, vocab_major, logits_dtype, res, cotangents):
    dhidden, dw = res
    g = cotangents[0]  # correct_sum is piecewise constant: no gradient
    # Targets and weights are data: no cotangent (the positions of weight 0 were
    # never evaluated, so d loss / d weights there is unknown, not zero).
    return dhidden * g.astype(dhidden.dtype), dw * g.astype(dw.dtype), None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def chunked_cross_entropy(
    hidden: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    chunk: int,
    vocab_major: bool = True,
    logits_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array]:
    """(loss_sum, correct_sum) float32 scalars; see the module docstring for shapes.
    `logits_dtype`: what the LM-head matmul writes (`ModelConfig.logits_dtype`).

    Differentiable in `hidden` and `w`; `targets` and `weights` get no gradient."""
    _check(hidden, targets, weights, chunk)
    targets = jnp.asarray(targets, jnp.int32)
    weights = jnp.asarray(weights, jnp.float32)
    return _fused(hidden, w, targets, weights, int(chunk), bool(vocab_major), str(logits_dtype))
