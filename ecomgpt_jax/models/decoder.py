"""The decoder-only transformer (BLOOM and the Llama family) and its KV-cache API.

Forward pass (training / scoring)::

    model = Decoder(cfg)
    variables = model.init(rng, tokens)            # params boxed as nn.Partitioned
    params = nn.unbox(variables)["params"]         # plain arrays
    logits = model.apply({"params": params}, tokens, positions=None, segment_ids=None)
        tokens       int32 [B, L]
        segment_ids  int32 [B, L]; 0 = padding; tokens attend causally within their
                     segment only (packed sequences). Default: all ones. Each
                     segment must be one run of slots (as packing makes them):
                     attention_impl "cudnn" tells segments apart by runs.
        positions    int32 [B, L]; default restarts at 0 in every segment. Given,
                     they must count up by one inside a segment ("cudnn" uses slots
                     for ALiBi's distances).
        -> logits    float32 [B, L, V]

    hidden = model.apply({"params": params}, tokens, ..., return_hidden=True)
        -> [B, L, D] final-norm hidden states (compute dtype); then, e.g. per chunk,
    logits = model.apply({"params": params}, hidden, method=Decoder.logits_from_hidden)
        -> float32 [..., V]; or use `lm_head_kernel(cfg, params)` -> [D, V].
    For training, `losses.chunked_cross_entropy(hidden, w, targets, weights, chunk,
    vocab_major)` with `w, vocab_major = losses.head_weights(cfg, params)` fuses the
    LM head and the loss, chunk by chunk over the loss-weighted positions only (no full
    [B, L, V] logits).

Incremental decoding with a KV cache (`attention.KVCache`; `cache.take(idx)` selects
or reorders rows, e.g. beams)::

    cache = init_cache(cfg, batch=B, max_len=T)       # T >= prompt + new tokens
    # 1. prefill: prompts LEFT-padded to a common length P, padding has segment 0.
    logits, cache = model.apply({"params": params}, prompt_tokens,      # [B, P]
                                segment_ids=prompt_mask.astype(jnp.int32),  # 1 = token
                                positions=None,       # default: 0.. per row, pads 0
                                cache=cache)          # logits [B, P, V]; next token
                                                      # from logits[:, -1]
    # 2. steps: one (or more) new tokens per row, written at slot cache.index.
    logits, cache = model.apply({"params": params}, next_tokens[:, None],   # [B, 1]
                                segment_ids=jnp.ones((B, 1), jnp.int32),
                                positions=None,       # default: number of non-padding
                                cache=cache)          # tokens already cached in the row
    # Outputs equal the full forward pass on the unpadded sequence. Rows whose
    # generation finished may keep feeding tokens (they do not affect other rows).

Cache semantics: a call with tokens [B, L] writes slots [index, index + L) of every
layer (`cache.index` is the same for all rows and advances by L; writes past
`max_len` are clamped by XLA, so size the cache for prompt + max new tokens). A new
query sees cached slots with the same segment id (0 never), at or before its slot.
Passing explicit `positions`/`segment_ids` with the cache is allowed (e.g. several
packed prompts per row); the defaults assume one sequence per row.

Parameter tree (`[N]` = leading scanned `layers` axis, logical names in brackets)::

    embed/embedding            [V, D]                      (vocab, embed)
    embed_norm/{scale,bias}    [D]            BLOOM only
    layers/attn_norm/scale     [N, D]   (+ bias for BLOOM)
    layers/attn/qkv_kernel     [N, D, H, 3, Hd]  qkv_bias [N, H, 3, Hd]   BLOOM
    layers/attn/{q,k,v}_kernel [N, D, H|K, Hd]  ({q,k,v}_bias [N, H|K, Hd] Qwen2)  Llama
    layers/attn/out_kernel     [N, H, Hd, D]     (out_bias [N, D] BLOOM)
    layers/mlp_norm/scale      [N, D]   (+ bias for BLOOM)
    layers/mlp/up_kernel       [N, D, F]  (up_bias [N, F] BLOOM)
    layers/mlp/gate_kernel     [N, D, F]  Llama only
    layers/mlp/down_kernel     [N, F, D]  (down_bias [N, D] BLOOM)
    final_norm/scale           [D]      (+ bias for BLOOM)
    lm_head/kernel             [D, V]   untied heads only
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecomgpt_jax import partitioning as P
from ecomgpt_jax.models import losses
from ecomgpt_jax.models.attention import (
    Attention,
    KVCache,
    MaskInfo,
    init_cache,
    make_mask_info,
    make_prefix_info,
    segment_positions,
)
from ecomgpt_jax.models.config import ModelConfig
from ecomgpt_jax.models.layers import Embed, LMHead, Mlp, Norm, constrain

__all__ = ["Decoder", "KVCache", "init_cache", "lm_head_kernel", "abstract_params"]

HIDDEN_AXES = (P.BATCH, P.LENGTH, P.ACT_EMBED)


class Block(nn.Module):
    """One pre-norm transformer layer as a scan body: (carry, info) -> (carry, None).

    carry = (x [B, L, D], kv) with kv None or (cache_k, cache_v, layer, index).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, carry, info: MaskInfo):
        x, kv = carry
        y, new_kv = Attention(self.cfg, name="attn")(Norm(self.cfg, "attn_norm")(x), info, kv)
        x = constrain(x + y, HIDDEN_AXES)
        x = x + Mlp(self.cfg, name="mlp")(Norm(self.cfg, "mlp_norm")(x))
        x = constrain(x, HIDDEN_AXES)
        if kv is not None:
            _, _, layer, index = kv
            kv = (*new_kv, layer + 1, index)
        return (x, kv), None


def _block_class(cfg: ModelConfig):
    if cfg.remat_policy == "none":
        return Block
    policy = None
    if cfg.remat_policy not in ("full", "nothing_saveable"):
        policy = getattr(jax.checkpoint_policies, cfg.remat_policy)
    # Inside a scan, the loop already keeps XLA from merging the recomputation with the
    # forward pass (prevent_cse=False is then faster, as the JAX docs say). Unrolled,
    # the layers are straight-line code and need jax.checkpoint's CSE barriers. Even with
    # them, XLA:CPU's temp memory for an unrolled 4-layer tiny model was the same with
    # "full" as with "none" (the recomputation is there, scheduled early). On an H100
    # (2026-11-27, before the barriers) the unrolled bloomz-1b1 step asked for the same
    # 30.5 GiB temp buffer with and without remat; unrolled remat with the barriers is
    # unmeasured on a GPU. To save activation memory, keep layers in a scan.
    return nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)


class Decoder(nn.Module):
    """Decoder-only LM; see the module docstring for the full API."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = Embed(cfg)
        if cfg.family == "bloom":
            self.embed_norm = Norm(cfg, "embed_norm")
        # Layers share one stacked parameter tree (leading `layers` axis) whether or
        # not they are scanned; scan_layers=False just unrolls the loop.
        self.layers = nn.scan(
            _block_class(cfg),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=cfg.layers,
            unroll=1 if cfg.scan_layers else cfg.layers,
            metadata_params={nn.PARTITION_NAME: P.LAYERS},
        )(cfg)
        self.final_norm = Norm(cfg, "final_norm")
        if not cfg.tie_embeddings:
            self.lm_head = LMHead(cfg)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        prefix: KVCache | None = None,
    ):
        """tokens int [B, L] -> logits float32 [B, L, V] (hidden [B, L, D] when
        return_hidden); with `cache`, returns (logits or hidden, new_cache). With a
        `prefix` (a prompt cache of B' rows; needs `cache`), row r also attends to prompt
        r // (B / B') (beam search: the prompt is shared by an item's beams and `cache`
        holds only the generated tokens)."""
        tokens = jnp.asarray(tokens, jnp.int32)
        _check_cache_use(tokens, cache, prefix)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        if positions is None:
            positions = segment_positions(segment_ids)
            if cache is not None:
                cached = (cache.segment_ids != 0).sum(axis=1, dtype=jnp.int32)
                if prefix is not None:
                    in_prefix = (prefix.segment_ids != 0).sum(axis=1, dtype=jnp.int32)
                    group = tokens.shape[0] // in_prefix.shape[0]
                    cached = cached + jnp.repeat(in_prefix, group)
                positions = positions + cached[:, None]
        positions = jnp.asarray(positions, jnp.int32)
        use_alibi = self.cfg.family == "bloom"

        if cache is None:
            info = make_mask_info(segment_ids, positions, segment_ids, positions, 0, use_alibi)
            kv = None
        else:
            index = cache.index[0]
            k_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, index))
            k_positions = jax.lax.dynamic_update_slice(cache.positions, positions, (0, index))
            info = make_mask_info(segment_ids, positions, k_segments, k_positions, index, use_alibi)
            if prefix is not None:
                prefix_info = make_prefix_info(prefix, segment_ids, positions, use_alibi)
                info = info.replace(prefix=prefix_info)
            kv = (cache.k, cache.v, jnp.int32(0), index)

        x = self.embed(tokens)
        if self.cfg.family == "bloom":
            x = self.embed_norm(x)
        x = constrain(x, HIDDEN_AXES)
        (x, kv), _ = self.layers((x, kv), info)
        x = self.final_norm(x)
        out = x if return_hidden else self.logits_from_hidden(x)
        if cache is None:
            return out
        new_cache = KVCache(
            k=kv[0],
            v=kv[1],
            segment_ids=k_segments,
            positions=k_positions,
            index=cache.index + tokens.shape[1],
        )
        return out, new_cache

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden [..., D] (e.g. a chunk of positions) -> float32 logits [..., V]."""
        logits = self.embed.attend(hidden) if self.cfg.tie_embeddings else self.lm_head(hidden)
        if logits.ndim == 3:
            logits = constrain(logits, (P.BATCH, P.LENGTH, P.ACT_VOCAB))
        return logits


def _check_cache_use(tokens: jax.Array, cache: KVCache | None, prefix: KVCache | None):
    """Refuses what would silently compute wrong logits: XLA clamps a cache write that
    runs past the last slot (overwriting earlier tokens), and a prefix without a cache
    would be ignored. The slot check is exact where `cache.index` is concrete; under
    jit only the call's own length can be checked."""
    if prefix is not None and cache is None:
        raise ValueError("Decoder: `prefix` (a shared prompt cache) needs `cache` as well")
    if cache is None:
        return
    length, slots = tokens.shape[1], cache.max_length
    start = None if isinstance(cache.index, jax.core.Tracer) else int(cache.index[0])
    if length + (start or 0) > slots:
        at = "" if start is None else f" at cache slot {start}"
        raise ValueError(
            f"Decoder: writing {length} tokens{at} needs {length + (start or 0)} cache "
            f"slots, the cache has {slots}: size it for prompt + new tokens "
            "(init_cache(max_len=...))"
        )


def lm_head_kernel(cfg: ModelConfig, params) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when tied): the same
    choice as `losses.head_weights`, in the [D, V] layout."""
    w, vocab_major = losses.head_weights(cfg, params)
    return w.T if vocab_major else w


def abstract_params(cfg: ModelConfig, boxed: bool = False):
    """Parameter shapes/dtypes (jax.ShapeDtypeStruct tree) without allocating.

    With boxed=True the leaves stay wrapped in nn.Partitioned, so
    `nn.get_partition_spec(tree)` gives each parameter's logical axes.
    """
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.PRNGKey(0), tokens))
    params = variables["params"]
    return params if boxed else nn.unbox(params)
