"""Splash attention (the Pallas TPU kernel) for causal self-attention over packed rows.

    out = attend_splash(q, k, v, segment_ids)   # ModelConfig(attention_impl="splash")
        q [B, L, H, Hd], k/v [B, L, K, Hd], segment_ids int32 [B, L] -> [B, L, H, Hd]

The kernel takes segment ids and a static causal mask, so no [L, S] mask or bias is ever
materialised and fully masked blocks are skipped. It has no additive bias, so it serves
the RoPE family (Llama / Qwen2); BLOOM's ALiBi needs "xla" or "cudnn" (ModelConfig
refuses "splash" for it). Only training-style calls use it (queries are the keys, no
KV cache, length a multiple of 128: the kernel's tiles); other calls, decoding included,
take the XLA path.

Grouped-query attention runs the kernel's multi-query form once per key/value head (its
G = H / K query heads share that head). Under a mesh the kernel runs per shard with
`jax.shard_map`: batch over the mesh axes of BATCH, heads over those of ACT_HEADS /
KV_HEADS (the one rules table in `partitioning`); the sequence is not split.

Padding (segment 0) attends causally to earlier padding instead of only to itself as in
`attention.make_mask_info`: those outputs are never used (zero loss weight, and no real
token attends to segment 0), and every row still has a key (no 0/0 in the softmax).

Off TPU the kernel runs in Pallas interpret mode (slow; what the CPU tests use).
Verified against the XLA path on CPU in interpret mode only; not yet run on a TPU.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math

import flax.linen as nn
import jax
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec

from ecomgpt_jax import partitioning as P

MAX_BLOCK = 512  # query/key block of the kernel (TPU tiles are 128 x 128)

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def _kernel(length: int, group: int, interpret: bool):
    if interpret:  # once per shape (the cache): the CPU tests run it this way on purpose
        log.warning(
            "attention_impl 'splash' on %s runs the Pallas TPU kernel in interpret mode, "
            "which is very slow: use 'xla' (or 'cudnn' on a GPU) off TPU",
            jax.default_backend(),
        )
    block = math.gcd(length, MAX_BLOCK)
    sizes = sa.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sa.MultiHeadMask([sa.CausalMask((length, length)) for _ in range(group)])

    def build():
        return sa.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)

    # The first call comes inside a trace (jit, Flax's nn.scan), and the kernel keeps
    # its mask tables as jax arrays: built there, the cached kernel would hold that
    # trace's tracers and the next trace would fail (UnexpectedTracerError; also inside
    # one nn.scan, whose partial evaluation `ensure_compile_time_eval` does not reach).
    # JAX's trace state is per thread, so a fresh thread builds it with concrete arrays.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(build).result()


def _local(q, k, v, segment_ids):
    """Per-shard body: q [b, L, H, Hd], k/v [b, L, K, Hd], segment_ids [b, L]."""
    b, length, h, hd = q.shape
    kh = k.shape[2]
    kernel = _kernel(length, h // kh, jax.default_backend() != "tpu")
    qg = (q * (1.0 / math.sqrt(hd))).astype(q.dtype)
    qg = qg.reshape(b, length, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)  # [b, K, G, L, Hd]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, K, L, Hd]

    def one(qx, kx, vx, seg):  # qx [G, L, Hd], kx/vx [L, Hd]
        return kernel(qx, kx, vx, segment_ids=sa.SegmentIds(q=seg, kv=seg))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over K
    out = jax.vmap(per_head)(qg, kt, vt, segment_ids)  # [b, K, G, L, Hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, hd)


def attend_splash(q, k, v, segment_ids) -> jax.Array:
    """See the module docstring for shapes. Must be called inside `partitioning.axis_rules()`
    when a mesh is set (as the model always is)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _local(q, k, v, segment_ids)
    q_spec = nn.logical_to_mesh_axes((P.BATCH, P.LENGTH, P.ACT_HEADS, P.HEAD_DIM))
    kv_spec = nn.logical_to_mesh_axes((P.BATCH, P.LENGTH, P.KV_HEADS, P.HEAD_DIM))
    seg_spec = nn.logical_to_mesh_axes((P.BATCH, P.LENGTH))
    heads_split, kv_heads_split = (P.mesh_split(a, mesh)[1] for a in (P.ACT_HEADS, P.KV_HEADS))
    if q.shape[2] % heads_split or k.shape[2] % kv_heads_split:
        # Heads that do not split evenly (e.g. one KV head on a tensor axis of 2):
        # every shard computes all heads of its batch rows.
        q_spec = PartitionSpec(q_spec[0], None, None, None)
        kv_spec = PartitionSpec(kv_spec[0], None, None, None)
    return jax.shard_map(
        _local,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
        out_specs=q_spec,
        check_vma=False,
    )(q, k, v, segment_ids)
