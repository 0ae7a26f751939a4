"""Blocked causal self-attention with a flash-style backward pass (the XLA path).

    out = attend_blocked(q, k, v, mask, rel_pos, slopes, block)
        q [B, L, H, Hd], k/v [B, L, K, Hd], mask bool [B, L, L],
        rel_pos float32 [B, L, L] (ALiBi: pos_k - pos_q) or None, slopes [H] or None
        -> [B, L, H, Hd]

Query block i (rows i*block .. (i+1)*block - 1) reads keys 0 .. (i+1)*block - 1 only:
the keys above the diagonal are masked anyway, so the result is that of one softmax over
all keys ((n - 1) / 2n of the score matrix skipped for n blocks).

Why a custom VJP rather than autodiff of the blocked forward: autodiff turns each
block's key slice k[:, :end] into a zero-padded gradient and sums n of them in
[B, L, H, Hd] layout, which XLA:CPU fuses into one transposing pad-and-add loop (95 ms
a layer at 8 x 512 x 8 heads on 2 cores, a quarter of the layer's backward). Here the
backward is the flash-attention one: probabilities are recomputed from the saved
log-sum-exp (no [B, H, L, L] probabilities kept for the backward), and key/value
gradients are accumulated in float32, in head-major layout, into the slice each block
reads.

Internally everything is head-major: q [B, K, G, L, Hd], k/v [B, K, L, Hd], G = H / K
(grouped-query heads share their key/value head; k and v are never repeated).
Numerics match `attention._attend`: float32 scores, softmax and log-sum-exp;
probabilities cast to v's dtype for the value matmul.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# finfo.min rather than -inf: no inf - inf = NaN even if a row were fully masked.
_NEG = float(jnp.finfo(jnp.float32).min)


def _scores(qb, kb, mask, rel, slopes):
    """qb [B, K, G, l, Hd], kb [B, K, s, Hd], mask [B, l, s], rel [B, l, s] | None,
    slopes [K, G] | None -> masked float32 scores [B, K, G, l, s]."""
    s = jnp.einsum("bkgld,bksd->bkgls", qb, kb, preferred_element_type=jnp.float32)
    s = s * (1.0 / math.sqrt(qb.shape[-1]))
    if rel is not None:
        s = s + slopes[None, :, :, None, None] * rel[:, None, None]
    return jnp.where(mask[:, None, None], s, _NEG)


def _bounds(length: int, block: int):
    return [(start, start + block) for start in range(0, length, block)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _blocked(q, k, v, mask, rel, slopes, block):
    return _blocked_fwd(q, k, v, mask, rel, slopes, block)[0]


def _blocked_fwd(q, k, v, mask, rel, slopes, block):
    """-> out [B, K, G, L, Hd] (v's dtype); residuals add out and the float32
    log-sum-exp [B, K, G, L] of every query row to the inputs."""
    outs, lses = [], []
    acc = jnp.float32 if jax.default_backend() == "cpu" else None
    for start, end in _bounds(q.shape[3], block):
        r = None if rel is None else rel[:, start:end, :end]
        s = _scores(q[:, :, :, start:end], k[:, :, :end], mask[:, start:end, :end], r, slopes)
        m = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        total = jnp.sum(e, axis=-1, keepdims=True)
        probs = (e / total).astype(v.dtype)
        # On CPU: float32 output, then v's dtype: XLA:CPU's fast bf16 matmul kernels
        # need a float32 output (see `layers.dot`). Elsewhere a bf16 output halves
        # the writes and the accumulation is float32 inside the kernel anyway.
        pv = jnp.einsum("bkgls,bksd->bkgld", probs, v[:, :, :end], preferred_element_type=acc)
        outs.append(pv.astype(v.dtype))
        lses.append((m + jnp.log(total))[..., 0])
    out, lse = jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)
    return out, (q, k, v, mask, rel, slopes, out, lse)


def _blocked_bwd(block, res, d_out):
    """d_out [B, K, G, L, Hd] -> (dq, dk, dv) in the inputs' dtypes; none for the mask,
    ALiBi distances and slopes (constants of the step)."""
    q, k, v, mask, rel, slopes, out, lse = res
    f32 = jnp.float32
    # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij: the softmax backward's row term.
    delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1)  # [B, K, G, L]
    dk = jnp.zeros(k.shape, f32)
    dv = jnp.zeros(v.shape, f32)
    dqs = []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for start, end in _bounds(q.shape[3], block):
        qb, dob = q[:, :, :, start:end], d_out[:, :, :, start:end]
        kb, vb = k[:, :, :end], v[:, :, :end]
        r = None if rel is None else rel[:, start:end, :end]
        s = _scores(qb, kb, mask[:, start:end, :end], r, slopes)
        p = jnp.exp(s - lse[..., start:end, None])  # masked entries: exp(-huge) = 0
        dv_b = jnp.einsum("bkgls,bkgld->bksd", p.astype(v.dtype), dob, preferred_element_type=f32)
        dv = dv.at[:, :, :end].add(dv_b)
        dp = jnp.einsum("bkgld,bksd->bkgls", dob, vb, preferred_element_type=f32)
        ds = (p * (dp - delta[..., start:end, None]) * scale).astype(q.dtype)
        dq_b = jnp.einsum("bkgls,bksd->bkgld", ds, kb, preferred_element_type=f32)
        dqs.append(dq_b.astype(q.dtype))
        dk = dk.at[:, :, :end].add(
            jnp.einsum("bkgls,bkgld->bksd", ds, qb, preferred_element_type=f32)
        )
    dq = jnp.concatenate(dqs, axis=3)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def attend_blocked(q, k, v, mask, rel_pos, slopes, block: int) -> jax.Array:
    """See the module docstring; `block` must divide L."""
    b, length, h, hd = q.shape
    kh = k.shape[2]
    if length % block:
        raise ValueError(f"attend_blocked: block {block} must divide length {length}")
    qh = q.reshape(b, length, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, Hd]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, L, Hd]
    s = None
    if rel_pos is not None:
        s = jnp.asarray(np.asarray(slopes, np.float32).reshape(kh, h // kh))
    out = _blocked(qh, kt, vt, mask, rel_pos, s, block)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, hd)
