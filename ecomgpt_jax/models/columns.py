"""Score biases as extra head columns of q and k, for attention kernels that take no
bias or mask cheaply (cuDNN differentiates any it is given).

    q', k' = head_columns(q, k, scale, slopes, key_positions, key_runs)
        q [B, L, H, Hd], k [B, S, K, Hd] -> [B, L, H, Hd'], [B, S, K, Hd'], Hd' the head
        dim plus 6 (ALiBi) and / or 2 (segment runs) columns, rounded up to a multiple of 8
    plan_columns(head_dim, keys, dtype, alibi, runs) -> which of the two fit

`attention.attend_dot_product` uses them; the exactness argument is in `head_columns`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _split_exact(x: np.ndarray, dtype, parts: int) -> list[np.ndarray]:
    """x (float64) as `parts` addends, each exactly representable in `dtype`, whose sum
    is x to about parts * (mantissa bits + 1) bits."""
    out, rest = [], np.asarray(x, np.float64)
    for _ in range(parts):
        part = rest.astype(dtype).astype(np.float64)
        out.append(part)
        rest = rest - part
    return out


def _hi_lo(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """int32 x [B, S] in [0, 2**(2n)) -> (hi, lo) in `dtype`, hi + lo = x, each exact
    (n = mantissa bits + 1: lo < 2**n, hi a multiple of 2**n with at most n bits)."""
    bits = jnp.finfo(dtype).nmant + 1
    x = x.astype(jnp.int32)
    lo = x & ((1 << bits) - 1)
    return (x - lo).astype(dtype), lo.astype(dtype)


def segment_runs(segment_ids: jax.Array) -> jax.Array:
    """The index of the run of equal ids each slot is in: [B, S] -> int32 [B, S].

    E.g. segments [0 0 1 1 1 2 2 0] -> [0 0 1 1 1 2 2 3] (trailing padding is a run too).
    """
    seg = segment_ids.astype(jnp.int32)
    change = (seg[:, 1:] != seg[:, :-1]).astype(jnp.int32)
    return jnp.concatenate([jnp.zeros_like(seg[:, :1]), jnp.cumsum(change, axis=1)], axis=1)


# Score gap (in logits, after the softmax scale) between a key of the query's own run
# and one of the run before it, at least: at equal raw scores e**-64 of the weight leaks
# across, e**-34 where the earlier key's raw score is 30 higher.
RUN_GAP = 64.0
ALIBI_COLUMNS, RUN_COLUMNS = 6, 2


def run_gap(scale: float) -> float:
    """The gap actually used: RUN_GAP rounded up so gap / scale is a power of two (one
    column value, exact in any float dtype): 64 for head dim 64, 104.5 for 96."""
    return 2.0 ** math.ceil(math.log2(RUN_GAP / scale)) * scale


def head_columns(q, k, scale: float, slopes=None, key_positions=None, key_runs=None):
    """Score biases as extra head dimensions of q and k, for kernels that would
    otherwise need a [B, H, L, S] bias or mask (and compute its gradient).

    q [B, L, H, Hd], k [B, S, K, Hd] bfloat16 (or float32, to float32 rounding) ->
    q' [B, L, H, Hd'], k' [B, S, K, Hd'], Hd' = `columns_width(Hd, n)` with n = 6 for
    ALiBi (slopes [H], key_positions int32 [B, S] < 2**16) plus 2 for segment runs
    (key_runs int32 [B, S] < 2**16, see `segment_runs`), such that (float32 accumulation)
        scale * q'.k' = scale * q.k + slope_h * pos_k + run_gap(scale) * run_k.

    ALiBi: BLOOM's bias slope * (pos_k - pos_q) differs from slope * pos_k by a constant
    per query row, which softmax ignores (HF BLOOM adds slope * pos_k too).
    Runs: with causal masking, every key a query sees is in its own run or an earlier
    one; run_gap * run_k puts the latter at least run_gap below, which hides them
    (weight e**-64 at equal scores) without any mask, as the masking rule requires of
    segments (`attend_dot_product` says when this holds).
    Exactness: with n = mantissa bits + 1 (8 for bfloat16), each integer splits into
    hi + lo of at most n significant bits (`_hi_lo`) and slope / scale into three dtype
    values c1 + c2 + c3 (relative remainder below 2**-24); gap / scale is a power of two.
    Every product of a q and a k column then has at most 2n <= 24 significant bits, so
    it is exact in float32 and only the float32 sums round: a few float32 ulps of the
    largest bias, slope * pos + gap * run (about 5e-4 logits at 2048 keys and 16 runs,
    about 1e-2 near 2**16 keys).
    """
    dtype = np.dtype(q.dtype)
    h = q.shape[2]
    q_cols, k_cols = [], []  # numpy [H] constants / arrays [B, S]
    if slopes is not None:
        c = _split_exact(np.asarray(slopes, np.float64) / scale, dtype, 3)
        hi, lo = _hi_lo(key_positions, dtype)
        q_cols += c + c
        k_cols += [hi] * 3 + [lo] * 3
    if key_runs is not None:
        q_cols += [np.full(h, run_gap(scale) / scale)] * RUN_COLUMNS
        k_cols += list(_hi_lo(key_runs, dtype))
    pad = columns_width(q.shape[-1], len(q_cols)) - q.shape[-1] - len(q_cols)
    q_cols = np.stack(q_cols + [np.zeros(h)] * pad, axis=-1)  # [H, n + pad]
    q_cols = jnp.broadcast_to(jnp.asarray(q_cols, dtype), (*q.shape[:2], *q_cols.shape))
    k_cols = jnp.stack(k_cols + [jnp.zeros_like(k_cols[0])] * pad, axis=-1)  # [B, S, n + pad]
    k_cols = jnp.broadcast_to(k_cols[:, :, None, :], (*k.shape[:3], k_cols.shape[-1]))
    return jnp.concatenate([q, q_cols], axis=-1), jnp.concatenate([k, k_cols], axis=-1)


# Columns are used only up to this padded head dim (BLOOM's 64 -> 72 and 96 -> 104);
# BLOOM's 128 would become 136, past cuDNN's limit before Hopper and untimed after it,
# so it keeps the explicit bias and mask. Key lengths past 2**16 (beyond what the
# bfloat16 hi / lo split holds exactly) keep them too, and so does float16: its mask
# value, -32768, is smaller than the columns' biases can grow.
MAX_COLUMNS_HEAD_DIM = 128
MAX_COLUMNS_KEYS = 2**16
COLUMNS_DTYPES = ("bfloat16", "float32")  # float32: jax.nn's XLA implementation only


def columns_width(head_dim: int, columns: int = ALIBI_COLUMNS) -> int:
    """The head dim with `columns` extra columns, rounded up to a multiple of 8."""
    return -(-(head_dim + columns) // 8) * 8


def plan_columns(head_dim: int, keys: int, dtype, alibi: bool, runs: bool) -> tuple[bool, bool]:
    """(ALiBi as columns, segment runs as columns) for `attend_dot_product`: both where
    they fit (`MAX_COLUMNS_*`, `COLUMNS_DTYPES`), else ALiBi alone, else neither."""

    def fits(n: int) -> bool:
        return (
            columns_width(head_dim, n) <= MAX_COLUMNS_HEAD_DIM
            and keys <= MAX_COLUMNS_KEYS
            and np.dtype(dtype).name in COLUMNS_DTYPES
        )

    if (alibi or runs) and fits(ALIBI_COLUMNS * alibi + RUN_COLUMNS * runs):
        return alibi, runs
    return alibi and fits(ALIBI_COLUMNS), False
