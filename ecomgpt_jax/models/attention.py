"""Causal self-attention for packed sequences: ALiBi (BLOOM) or RoPE (Llama), KV cache.

Masking rule (training, prefill and decoding alike): query i may attend to key j iff
    segment[j] == segment[i]  and  segment[j] != 0  and  slot[j] <= slot[i]
where `slot` is the index along the (cache) sequence and segment 0 is padding (a
padding query attends only to its own slot: its output is unused).
Positions restart at 0 in every segment, so RoPE phases and ALiBi distances
(`slope * (pos_k - pos_q)`) are those of each sequence on its own. Packed rows hold
each segment as one run of slots, positions counting up by one inside it (what
packing and `segment_positions` make); the cuDNN path relies on that
(`attend_dot_product`).

Shapes: B batch, L query length, S key length (L, or the cache length T), H query
heads, K kv heads (H % K == 0, G = H // K), Hd head dim, D model width.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ecomgpt_jax import partitioning as P
from ecomgpt_jax.models import blocked
from ecomgpt_jax.models.columns import head_columns, plan_columns, segment_runs
from ecomgpt_jax.models.config import ModelConfig
from ecomgpt_jax.models.layers import add_bias, constrain, dot, dtype_of, param

# ----------------------------------------------------------------------------- positions


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes [H] (Press et al.; BLOOM's `build_alibi_tensor`).

    For a power of two n the slopes are 2^(-8/n * (1..n)); otherwise the slopes
    of the closest smaller power of two p, followed by every other slope of 2p.
    """
    p = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(p) - 3)))
    slopes = [base**i for i in range(1, p + 1)]
    if p != num_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * p) - 3)))
        slopes += [extra**i for i in range(1, 1 + 2 * min(p, num_heads - p), 2)]
    return np.asarray(slopes, np.float32)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies [Hd // 2], with Llama-3 scaling when configured."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = cfg.rope_scaling
    if s is not None:
        # Llama 3.1 (HF `_compute_llama3_parameters`): long wavelengths are divided by
        # `factor`, short ones kept, the band in between interpolated smoothly.
        wavelen = 2 * math.pi / inv
        low_wavelen = s.original_max_positions / s.low_freq_factor
        high_wavelen = s.original_max_positions / s.high_freq_factor
        scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B, L, N, Hd] by positions [B, L] (HF "rotate_half" layout)."""
    angles = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)  # [B, L, Hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions restarting at 0 in every segment: [B, L] -> int32 [B, L].

    E.g. segments [0 0 1 1 1 2 2] -> [0 0 0 1 2 0 1] (padding: 0, unused).
    """
    seg = segment_ids.astype(jnp.int32)
    idx = jnp.arange(seg.shape[1], dtype=jnp.int32)[None, :]
    starts = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], 1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return jnp.where(seg != 0, idx - start_idx, 0)


# ----------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
    """Decoding state; `cache.take(idx)` selects / reorders rows (beams).

    k, v:         [layers, B, K, T, Hd]  keys (RoPE already applied) and values
    segment_ids:  int32 [B, T]  0 = empty slot or padding (never attended)
    positions:    int32 [B, T]  position of the token in each slot
    index:        int32 [B]     next slot to write; equal across the batch

    k/v are layer-major and head-major: one layer's [B, K, T, Hd] is a contiguous block
    and each head's T x Hd keys lie as the score and value matmuls read them. Measured
    on XLA:CPU (beam 4, 8 x 512-token prompts): with [B, layers, T, K, Hd], every
    decode step copied every layer's keys and values twice (out of the cache, then
    transposed) before its matmuls.
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    positions: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.k.shape[3]

    def take(self, idx: jax.Array) -> KVCache:
        """The cache of rows `idx` (int [B']): row i of the result is row idx[i]."""
        return KVCache(
            k=jnp.take(self.k, idx, axis=1),
            v=jnp.take(self.v, idx, axis=1),
            segment_ids=self.segment_ids[idx],
            positions=self.positions[idx],
            index=self.index[idx],
        )


# Logical axes of the cache leaves, for sharding it like the activations.
CACHE_AXES = KVCache(
    k=(P.LAYERS, P.BATCH, P.KV_HEADS, P.LENGTH, P.HEAD_DIM),
    v=(P.LAYERS, P.BATCH, P.KV_HEADS, P.LENGTH, P.HEAD_DIM),
    segment_ids=(P.BATCH, P.LENGTH),
    positions=(P.BATCH, P.LENGTH),
    index=(P.BATCH,),
)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens (prompt + generated):
    k, v [layers, batch, kv_heads, max_len, head_dim], segment_ids and positions int32
    [batch, max_len], index int32 [batch] (the next slot of each row)."""
    dtype = dtype_of(cfg.dtype) if dtype is None else jnp.dtype(dtype)
    kv_shape = (cfg.layers, batch, cfg.kv_heads, max_len, cfg.head_dim)
    return KVCache(
        k=jnp.zeros(kv_shape, dtype),
        v=jnp.zeros(kv_shape, dtype),
        segment_ids=jnp.zeros((batch, max_len), jnp.int32),
        positions=jnp.zeros((batch, max_len), jnp.int32),
        index=jnp.zeros((batch,), jnp.int32),
    )


@flax.struct.dataclass
class PrefixInfo:
    """A prompt shared by groups of G consecutive rows (the beams of one item): its
    keys/values k, v [layers, B, K, P, Hd] (a prompt `KVCache` after prefill, read once
    per group instead of once per row) and, per query row, mask bool [R, L, P] and
    rel_pos float32 [R, L, P] (ALiBi) or None. Row r belongs to group r // G, G = R / B;
    the queries follow the whole prompt (one prompt per group)."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    rel_pos: jax.Array | None


def make_prefix_info(prefix: KVCache, q_segments, q_positions, use_alibi) -> PrefixInfo:
    """prefix: the prompts' cache (B rows); q_segments / q_positions int32 [R, L], R a
    multiple of B."""
    group = jnp.arange(q_segments.shape[0]) // (q_segments.shape[0] // prefix.k.shape[1])
    k_segments, k_positions = prefix.segment_ids[group], prefix.positions[group]  # [R, P]
    mask = (k_segments[:, None, :] != 0) & (q_segments[:, :, None] != 0)
    rel = None
    if use_alibi:
        rel = (k_positions[:, None, :] - q_positions[:, :, None]).astype(jnp.float32)
    return PrefixInfo(k=prefix.k, v=prefix.v, mask=mask, rel_pos=rel)


@flax.struct.dataclass
class MaskInfo:
    """What every layer needs to mask and bias scores (computed once per call).

    mask:      bool [B, L, S]  may query attend to key
    rel_pos:   float32 [B, L, S]  pos_k - pos_q (ALiBi) or None
    positions: int32 [B, L]  query positions (RoPE)
    key_positions: int32 [B, S]  key positions (ALiBi as head columns) or None
    prefix:    keys shared by groups of rows (beam search), see `attend_prefixed`
    causal_self: see below (set by `make_mask_info` when q_offset is the literal 0, S == L)
    """

    mask: jax.Array
    rel_pos: jax.Array | None
    positions: jax.Array
    prefix: PrefixInfo | None = None  # a prompt cache every row also attends to
    # int32 [B, L] query segments, set when causal_self and the keys are the queries
    segments: jax.Array | None = None
    # Static: queries are slots 0..L-1 of the keys themselves (no cache), so key slot
    # j > query slot i is always masked and attention may skip those blocks.
    causal_self: bool = flax.struct.field(pytree_node=False, default=False)
    key_positions: jax.Array | None = None


def make_mask_info(
    q_segments, q_positions, k_segments, k_positions, q_offset, use_alibi: bool
) -> MaskInfo:
    """q_* [B, L], k_* [B, S]; queries sit at slots q_offset .. q_offset + L - 1."""
    q_slot = q_offset + jnp.arange(q_segments.shape[1])
    k_slot = jnp.arange(k_segments.shape[1])
    mask = (
        (k_segments[:, None, :] == q_segments[:, :, None])
        & (k_segments[:, None, :] != 0)
        & (k_slot[None, None, :] <= q_slot[None, :, None])
    )
    # A padding query sees only its own slot, so every row has a key: fused kernels
    # (cuDNN) return NaN gradients for fully masked rows. Nothing else sees padding.
    pad_self = (q_segments[:, :, None] == 0) & (k_slot[None, None, :] == q_slot[None, :, None])
    mask = mask | pad_self
    rel = None
    if use_alibi:
        rel = (k_positions[:, None, :] - q_positions[:, :, None]).astype(jnp.float32)
    causal_self = isinstance(q_offset, int) and q_offset == 0
    causal_self = causal_self and q_segments.shape[1] == k_segments.shape[1]
    # For kernels taking segment ids, and for `attend_dot_product`'s run columns, which
    # read keys' segments and positions from the queries': only when they are the same.
    same_keys = k_segments is q_segments and k_positions is q_positions
    segments = q_segments if causal_self and same_keys else None
    return MaskInfo(
        mask=mask,
        rel_pos=rel,
        positions=q_positions,
        segments=segments,
        causal_self=causal_self,
        key_positions=k_positions if use_alibi else None,
    )


# ----------------------------------------------------------------------------- attention


# Causal self-attention is computed in query blocks of this many rows (or more, see
# `query_block`); block i only reads keys 0 .. (i+1)*block - 1.
MIN_QUERY_BLOCK = 128
MAX_QUERY_BLOCKS = 16


def query_block(length: int) -> int:
    """Rows per query block for causal self-attention over `length` tokens (0 = one block).

    Blocking skips the key blocks above the diagonal ((n - 1) / 2n of the score matrix
    for n blocks: 3/8 at n = 4) and keeps each block's float32 scores small enough to
    stay in cache on CPU; at most MAX_QUERY_BLOCKS blocks bound the unrolled graph.
    """
    block = max(MIN_QUERY_BLOCK, -(-length // MAX_QUERY_BLOCKS))
    if length < 2 * block or length % block:
        return 0
    return block


def _attend(q, k, v, mask, rel_pos, slopes) -> jax.Array:
    """q [B, L, H, Hd], k/v [B, S, K, Hd], mask [B, L, S], rel_pos [B, L, S] | None."""
    b, length, h, hd = q.shape
    kh = k.shape[2]
    if kh == h:
        # Multi-head (BLOOM): plain [B, H, L, S] batched matmuls; XLA:CPU runs these
        # faster than the grouped form with its size-1 group axis.
        scores = jnp.einsum("blhd,bshd->bhls", q, k, preferred_element_type=jnp.float32)
        scores = scores * (1.0 / math.sqrt(hd))
        if rel_pos is not None:
            scores = scores + jnp.asarray(slopes)[None, :, None, None] * rel_pos[:, None]
        scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        return jnp.einsum("bhls,bshd->blhd", probs, v)
    qg = q.reshape(b, length, kh, h // kh, hd)
    scores = jnp.einsum("blkgd,bskd->bkgls", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(hd))
    if rel_pos is not None:
        s = jnp.asarray(slopes).reshape(kh, h // kh)
        scores = scores + s[None, :, :, None, None] * rel_pos[:, None, None]
    # finfo.min rather than -inf: no inf - inf = NaN even if a row were fully masked.
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
    return out.reshape(b, length, h, hd)


def attend_xla(q, k, v, info: MaskInfo, slopes) -> jax.Array:
    """Plain einsum attention with float32 scores and softmax.

    q [B, L, H, Hd], k/v [B, S, K, Hd] -> [B, L, H, Hd]. Grouped-query heads are
    handled by reshaping q to [B, L, K, G, Hd]; k and v are never repeated. Causal
    self-attention (`info.causal_self`) of two or more query blocks runs
    `blocked.attend_blocked`: query block i reads keys [0, end of block i) only, with a
    flash-style backward pass; the result is that of one block over all keys.
    """
    length = q.shape[1]
    block = query_block(length) if info.causal_self else 0
    if not block:
        return _attend(q, k, v, info.mask, info.rel_pos, slopes)
    return blocked.attend_blocked(q, k, v, info.mask, info.rel_pos, slopes, block)


def attend_prefixed(q, k, v, info: MaskInfo, slopes, pk, pv) -> jax.Array:
    """Attention over a shared prefix followed by each row's own keys (one softmax).

    q [R, L, H, Hd]; k/v [R, S, K, Hd] each row's own cache (mask/rel_pos in `info`);
    pk/pv [B, P, K, Hd] the prefix of each group of G = R / B rows (`info.prefix` holds
    its mask/rel_pos). The prefix is read once per group: for beam search that is the
    prompt once per item instead of once per beam. -> [R, L, H, Hd].
    """
    r, length, h, hd = q.shape
    b, p, kh, _ = pk.shape
    g, hg = r // b, h // kh
    scale = 1.0 / math.sqrt(hd)
    q5 = q.reshape(r, length, kh, hg, hd)
    own = jnp.einsum("rlkgd,rskd->rkgls", q5, k, preferred_element_type=jnp.float32) * scale
    qb = q5.reshape(b, g, length, kh, hg, hd)
    pre = jnp.einsum("bqlkgd,bpkd->bqkglp", qb, pk, preferred_element_type=jnp.float32)
    pre = pre.reshape(r, kh, hg, length, p) * scale
    if info.rel_pos is not None:
        s = jnp.asarray(slopes).reshape(kh, hg)[None, :, :, None, None]
        own = own + s * info.rel_pos[:, None, None]
        pre = pre + s * info.prefix.rel_pos[:, None, None]
    neg = jnp.finfo(jnp.float32).min
    own = jnp.where(info.mask[:, None, None], own, neg)
    pre = jnp.where(info.prefix.mask[:, None, None], pre, neg)
    probs = jax.nn.softmax(jnp.concatenate([pre, own], axis=-1), axis=-1).astype(v.dtype)
    out = jnp.einsum("rkgls,rskd->rlkgd", probs[..., p:], v)
    p_pre = probs[..., :p].reshape(b, g, kh, hg, length, p)
    out = out + jnp.einsum("bqkglp,bpkd->bqlkgd", p_pre, pv).reshape(out.shape)
    return out.reshape(r, length, h, hd)


def attend_dot_product(q, k, v, info: MaskInfo, slopes, implementation="cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention` (cuDNN flash attention on GPU); same contract
    as `attend_xla`, with biases and masks as extra head columns (`head_columns`) where
    `plan_columns` allows, because cuDNN differentiates any bias or mask it is given.

    Causal self-attention over packed rows (`info.causal_self`): the kernel gets
    `is_causal=True` and no mask at all; segments enter as runs (`segment_runs`) and
    ALiBi as slope * slot. That equals the masking rule for every non-padding query
    when each segment is one run of slots and positions count up by one inside it (as
    packing and `segment_positions` make them): ALiBi's distances are then slot
    distances, and the keys of earlier runs are hidden by the run columns. Padding
    queries see their own run of padding instead of their slot alone (their output is
    unused; every row still has a key, so no NaN). Otherwise (keys from a KV cache)
    the [B, 1, L, S] mask goes in, with ALiBi as columns of pos_k or as an explicit
    [B, H, L, S] bias. Calls with a shared-prompt prefix never come here: `Attention`
    sends them to `attend_prefixed` (XLA) whatever `attention_impl` says.

    Measured on an H100, one bloom-560m layer's forward + backward at 8 x 2048: 1.35 ms
    with run columns and no mask, 2.31 ms with ALiBi columns and the mask, 0.89 ms for
    the causal kernel without ALiBi or segments (benchmarks/RESULTS.md, 2026-11-27
    14:42); on an H200 the explicit bias and mask took 2.99 ms. The run columns hide
    earlier segments as long as raw scores differ by well under run_gap (64 logits).
    """
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        # cuDNN's own error comes from deep inside tracing and names no setting.
        raise ValueError(
            f"attention_impl 'cudnn' needs a 16-bit compute dtype, got {q.dtype}: set "
            "ModelConfig.dtype = 'bfloat16' (or use attention_impl 'xla')"
        )
    b, s, hd = k.shape[0], k.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(hd)
    alibi = info.rel_pos is not None
    runs = info.causal_self and info.segments is not None
    alibi_cols, run_cols = plan_columns(hd, s, q.dtype, alibi, runs)
    bias, mask = None, info.mask[:, None]
    if run_cols:
        slots = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        key_runs = segment_runs(info.segments)
        q, k = head_columns(q, k, scale, slopes if alibi else None, slots, key_runs)
        mask = None
    elif alibi_cols:
        q, k = head_columns(q, k, scale, slopes, info.key_positions)
    elif alibi:
        # Rounded to the compute dtype (bfloat16: 2**-9 of slope * distance), as HF's
        # BLOOM and the cuDNN API do; the columns above are exact.
        bias = jnp.asarray(slopes)[None, :, None, None] * info.rel_pos[:, None]
        bias = bias.astype(q.dtype)
    if q.shape[-1] != hd:
        # The API wants one head dim for q, k and v: v gets zero columns, cut off again.
        v = jnp.pad(v, [(0, 0)] * 3 + [(0, q.shape[-1] - hd)])
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=bias,
        mask=mask,
        scale=scale,
        is_causal=info.causal_self,
        implementation=implementation,
    )
    return out[..., :hd].astype(v.dtype)


class Attention(nn.Module):
    """Multi-head self-attention, [B, L, D] -> [B, L, D].

    BLOOM parameters: `qkv_kernel` [D, H, 3, Hd] (HF's fused per-head layout),
    `qkv_bias` [H, 3, Hd], `out_kernel` [H, Hd, D], `out_bias` [D].
    Llama parameters: `q_kernel` [D, H, Hd], `k_kernel`/`v_kernel` [D, K, Hd],
    optional `q_bias` [H, Hd], `k_bias`/`v_bias` [K, Hd] (Qwen2), `out_kernel` [H, Hd, D].
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, info: MaskInfo, kv=None):
        """x [B, L, D]; kv = None or (cache_k, cache_v, layer, index) with cache_k/v
        [layers, B, K, T, Hd]. Returns (y [B, L, D], updated (cache_k, cache_v) or None)."""
        cfg = self.cfg
        dtype = dtype_of(cfg.dtype)
        d, h, kh, hd = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim
        zeros = nn.initializers.zeros
        if cfg.family == "bloom":
            w = param(self, "qkv_kernel", (d, h, 3, hd), (P.EMBED, P.HEADS, P.QKV, P.HEAD_DIM))
            b = param(self, "qkv_bias", (h, 3, hd), (P.HEADS, P.QKV, P.HEAD_DIM), zeros)
            qkv = add_bias(dot("bld,dhtk->blhtk", x, w.astype(dtype)), b)
            q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        else:

            def proj(name, n, axis):
                w = param(self, f"{name}_kernel", (d, n, hd), (P.EMBED, axis, P.HEAD_DIM))
                y = dot("bld,dnk->blnk", x, w.astype(dtype))
                if cfg.qkv_bias:
                    bias = param(self, f"{name}_bias", (n, hd), (axis, P.HEAD_DIM), zeros)
                    y = add_bias(y, bias)
                return y

            q, k, v = proj("q", h, P.HEADS), proj("k", kh, P.KV_HEADS), proj("v", kh, P.KV_HEADS)
            inv_freq = rope_inv_freq(cfg)
            q = apply_rope(q, info.positions, inv_freq)
            k = apply_rope(k, info.positions, inv_freq)
        q = constrain(q, (P.BATCH, P.LENGTH, P.ACT_HEADS, P.HEAD_DIM))

        new_kv = None
        if kv is not None:
            # Write this call's keys/values at [index, index + L) of this layer, then
            # attend over the whole cache; unwritten slots have segment 0 (masked).
            cache_k, cache_v, layer, index = kv
            start = (layer, 0, 0, index, 0)

            def write(cache, x):  # x [B, L, K, Hd] -> the cache's [1, B, K, L, Hd]
                return jax.lax.dynamic_update_slice(
                    cache, x.swapaxes(1, 2)[None].astype(cache.dtype), start
                )

            def read(cache):  # [B, K, T, Hd] of this layer, viewed as [B, T, K, Hd]
                x = jax.lax.dynamic_index_in_dim(cache, layer, axis=0, keepdims=False)
                return x.swapaxes(1, 2).astype(dtype)

            cache_k, cache_v = write(cache_k, k), write(cache_v, v)
            k, v = read(cache_k), read(cache_v)
            new_kv = (cache_k, cache_v)

        slopes = alibi_slopes(h) if cfg.family == "bloom" else None
        if info.prefix is not None:  # decoding with a shared prompt (needs the cache)
            pk, pv = read(info.prefix.k), read(info.prefix.v)
            out = attend_prefixed(q, k, v, info, slopes, pk, pv)
        elif cfg.attention_impl == "cudnn":
            out = attend_dot_product(q, k, v, info, slopes)
        elif cfg.attention_impl == "splash" and info.causal_self and q.shape[1] % 128 == 0:
            from ecomgpt_jax.models import splash  # Pallas TPU ops: imported when used

            out = splash.attend_splash(q, k, v, info.segments)
        else:
            out = attend_xla(q, k, v, info, slopes)
        out = constrain(out, (P.BATCH, P.LENGTH, P.ACT_HEADS, P.HEAD_DIM))

        wo = param(self, "out_kernel", (h, hd, d), (P.HEADS, P.HEAD_DIM, P.EMBED))
        y = dot("blhk,hkd->bld", out, wo.astype(dtype))
        if cfg.family == "bloom":
            y = add_bias(y, param(self, "out_bias", (d,), (P.EMBED,), zeros))
        return y, new_kv
