"""Attention pieces: ALiBi slopes, RoPE frequencies, segment positions, masks, kernels."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax.models import attention as A
from ecomgpt_jax.models import columns as C
from ecomgpt_jax.models import config as mc


def _published_alibi_slopes(n):
    """Press et al. (ALiBi paper, reference code): geometric sequence from 2^(-8/n);
    for non-powers of two, the closest power of two's slopes plus every other slope
    of twice that power."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + power_of_2(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", [16, 12, 6, 32])
def test_alibi_slopes_match_published_formula(heads):
    np.testing.assert_allclose(A.alibi_slopes(heads), _published_alibi_slopes(heads), rtol=1e-7)


def test_alibi_slopes_known_values():
    # 16 heads: 2^(-i/2), i = 1..16; 12 heads: 2^-1..2^-8 then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    np.testing.assert_allclose(A.alibi_slopes(16), [2 ** (-i / 2) for i in range(1, 17)])
    expected12 = [2.0**-i for i in range(1, 9)] + [2 ** (-(2 * k - 1) / 2) for k in range(1, 5)]
    np.testing.assert_allclose(A.alibi_slopes(12), expected12)


def test_alibi_slopes_match_transformers():
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for heads in (6, 12, 16):
        mask = torch.ones(1, 3)
        alibi = build_alibi_tensor(mask, heads, torch.float32)  # [heads, 1, 3] = slope * pos
        np.testing.assert_allclose(A.alibi_slopes(heads), alibi[:, 0, 1].numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", ["tiny-llama", "llama-3-8b", "qwen2.5-7b"])
def test_rope_inv_freq_matches_transformers(name):
    """Against the inv_freq buffer of transformers' own rotary module for the config."""
    import transformers
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    cfg = mc.get_preset(name)
    if name == "llama-3-8b":  # Llama 3.1 scaling on the 8B shape
        cfg = dataclasses.replace(cfg, max_positions=131072, rope_scaling=mc.RopeScaling())
    hf = transformers.AutoConfig.for_model(**mc.to_hf_config(cfg))
    rotary = Qwen2RotaryEmbedding if cfg.hf_model_type == "qwen2" else LlamaRotaryEmbedding
    inv = rotary(config=hf).inv_freq.numpy()
    np.testing.assert_allclose(A.rope_inv_freq(cfg), inv, rtol=2e-6)


def test_segment_positions_restart_per_segment():
    seg = jnp.array([[0, 0, 1, 1, 1, 2, 2], [1, 1, 2, 2, 2, 0, 0]])
    np.testing.assert_array_equal(
        A.segment_positions(seg), [[0, 0, 0, 1, 2, 0, 1], [0, 1, 0, 1, 2, 0, 0]]
    )


def test_mask_is_causal_within_segment_and_never_sees_padding():
    seg = jnp.array([[1, 1, 2, 2, 0]])
    pos = A.segment_positions(seg)
    info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=True)
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1],  # padding sees only itself (keeps fused kernels finite)
        ],
        bool,
    )
    np.testing.assert_array_equal(info.mask[0], expected)
    # ALiBi distances restart with the positions: pos_k - pos_q.
    assert info.rel_pos[0, 3, 2] == -1 and info.rel_pos[0, 1, 0] == -1


def _random_qkv(heads, kv_heads, length=9, hd=8, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(k1, (2, length, heads, hd))
    k = jax.random.normal(k2, (2, length, kv_heads, hd))
    v = jax.random.normal(k3, (2, length, kv_heads, hd))
    return q, k, v


@pytest.mark.parametrize("heads,kv_heads,alibi", [(6, 6, True), (4, 2, False), (8, 1, False)])
def test_xla_and_dot_product_attention_agree(heads, kv_heads, alibi):
    q, k, v = _random_qkv(heads, kv_heads)
    seg = jnp.array([[0, 0, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    pos = A.segment_positions(seg)
    info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=alibi)
    slopes = A.alibi_slopes(heads) if alibi else None
    ours = A.attend_xla(q, k, v, info, slopes)
    ref = A.attend_dot_product(q, k, v, info, slopes, implementation="xla")
    valid = np.asarray(seg != 0)
    # atol: the run columns lift scores to about run_gap * run (181 here), where float32
    # holds 1.5e-5; the padding outputs differ by design (see attend_dot_product).
    np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(ref)[valid], atol=5e-5)
    assert np.isfinite(np.asarray(ours)).all() and np.isfinite(np.asarray(ref)).all()


def _long_segments(batch: int, length: int) -> jax.Array:
    """Segment ids [batch, length]: row 0 one segment of length - 40 tokens then padding,
    the others two segments (the second past position 256, where the ALiBi columns'
    `hi` part is non-zero in bfloat16) and padding."""
    seg = np.zeros((batch, length), np.int32)
    seg[0, : length - 40] = 1
    seg[1:, : length // 4] = 1
    seg[1:, length // 4 : length - 20] = 2
    return jnp.asarray(seg)


def test_dot_product_attention_in_bfloat16_matches_the_float32_reference():
    """The cuDNN path's formulation (ALiBi as head columns, zero-padded v), run by
    jax.nn's XLA implementation in bfloat16, against float32 attention: within bf16
    rounding of the output, on packed segments reaching position 600 and padding."""
    heads, length = 8, 640
    q, k, v = _random_qkv(heads, heads, length=length, hd=64, seed=3)
    seg = _long_segments(2, length)
    pos = A.segment_positions(seg)
    assert int(pos.max()) > 256
    info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=True)
    slopes = A.alibi_slopes(heads)
    ref = A._attend(q, k, v, info.mask, info.rel_pos, slopes)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    ours = A.attend_dot_product(*bf, info, slopes, implementation="xla")
    assert ours.dtype == jnp.bfloat16 and ours.shape == q.shape
    valid = np.asarray(seg != 0)
    err = np.abs(np.asarray(ours, np.float32) - np.asarray(ref))[valid]
    assert err.max() < 0.03 and err.mean() < 0.004
    # The columns carry the bias: without them the same call is far off.
    no_alibi = A.attend_dot_product(*bf, dataclasses.replace(info, rel_pos=None), slopes, "xla")
    assert np.abs(np.asarray(no_alibi, np.float32) - np.asarray(ref))[valid].max() > 0.3


def _many_segments(batch: int, length: int, size: int = 50) -> jax.Array:
    """Segment ids [batch, length]: segments of `size` tokens, then 40 of padding."""
    seg = np.zeros((batch, length), np.int32)
    seg[:, : length - 40] = 1 + np.arange(length - 40) // size
    return jnp.asarray(seg)


def _bloom_attention_case(heads, length, head_dim, seed, segments=_long_segments):
    """((q, k, v) [2, length, heads, head_dim] float32, MaskInfo with ALiBi over
    `segments(2, length)`, slopes [heads], valid bool [2, length, 1, 1], cotangent ct
    (zero on padding))."""
    qkv = _random_qkv(heads, heads, length=length, hd=head_dim, seed=seed)
    seg = segments(2, length)
    pos = A.segment_positions(seg)
    info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=True)
    valid = (seg != 0)[:, :, None, None]
    ct = jax.random.normal(jax.random.PRNGKey(9), qkv[0].shape) * valid
    return qkv, info, A.alibi_slopes(heads), valid, ct


@pytest.mark.parametrize("head_dim", [16, 128])
def test_dot_product_attention_gradients_match_xla_attention(head_dim):
    """Gradients through the ALiBi columns (head dim 16 -> 24) and through the explicit
    bias kept for head dim 128, in float32, equal those of `attend_xla`."""
    (q, k, v), info, slopes, valid, ct = _bloom_attention_case(4, 48, head_dim, seed=5)

    def grads(attend):
        return jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * ct), argnums=(0, 1, 2))(q, k, v)

    ours = grads(lambda q, k, v: A.attend_dot_product(q, k, v, info, slopes, "xla"))
    ref = grads(lambda q, k, v: A.attend_xla(q, k, v, info, slopes))
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def _capture_kernel_args(monkeypatch):
    """Records the bias / mask / is_causal that reach jax.nn.dot_product_attention."""
    seen, real = [], jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, mask=None, **kw):
        seen.append({"hd": q.shape[-1], "bias": bias, "mask": mask, "causal": kw["is_causal"]})
        return real(q, k, v, bias=bias, mask=mask, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    return seen


def test_causal_self_attention_reaches_the_kernel_without_mask_or_bias(monkeypatch):
    """Packed causal self-attention: no [B, 1, L, S] mask and no bias for the kernel to
    differentiate, only is_causal and 8 extra head columns; with a cache, the mask."""
    seen = _capture_kernel_args(monkeypatch)
    (q, k, v), info, slopes, _, _ = _bloom_attention_case(4, 64, 64, seed=1)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    A.attend_dot_product(*bf, info, slopes, "xla")
    assert seen[-1] == {"hd": 72, "bias": None, "mask": None, "causal": True}
    cached = dataclasses.replace(info, causal_self=False, segments=None)
    A.attend_dot_product(*bf, cached, slopes, "xla")
    assert seen[-1]["hd"] == 72 and seen[-1]["bias"] is None and not seen[-1]["causal"]
    assert seen[-1]["mask"].shape == (2, 1, 64, 64)
    # Keys given apart from the queries (equal values here): the run columns, which read
    # both from the queries, are not used; the mask is.
    seg = info.segments
    pos = A.segment_positions(seg)
    apart = A.make_mask_info(seg, pos, seg + 0, pos + 0, 0, use_alibi=True)
    assert apart.causal_self and apart.segments is None
    A.attend_dot_product(*bf, apart, slopes, "xla")
    assert seen[-1]["mask"].shape == (2, 1, 64, 64) and seen[-1]["causal"]


def test_run_columns_hide_earlier_segments_even_where_they_score_far_higher():
    """Keys of earlier segments whose raw scores beat the query's own segment's by 30
    (queries of odd segments, keys of the even segment before) get no weight (e**-34
    at most), with many short segments (29 of 5 tokens and one of 2: runs up to 31) and
    left and trailing padding: float32 output and gradients equal masked attention."""
    heads, length, hd = 4, 160, 16
    q, k, v = _random_qkv(heads, heads, length=length, hd=hd, seed=11)
    seg = np.zeros((2, length), np.int32)
    seg[0, 3:150] = 1 + np.arange(147) // 5  # 30 segments of 5 (and 2 of padding)
    seg[1, :] = 1 + np.arange(length) // 40
    seg = jnp.asarray(seg)
    assert int(C.segment_runs(seg).max()) == 31
    # Every query's direction gets a large component on even segments' keys (and none
    # on odd ones): raw scores to the earlier even segment are 30 above its own.
    boost = jnp.zeros(hd).at[0].set(1.0)
    even = ((seg % 2 == 0) & (seg != 0))[:, :, None, None]
    k = jnp.where(even, k + 30.0 * math.sqrt(hd) * boost / 3.0, k)
    q = q.at[..., 0].set(3.0)
    pos = A.segment_positions(seg)
    valid = (seg != 0)[:, :, None, None]
    ct = jax.random.normal(jax.random.PRNGKey(2), q.shape) * valid
    for alibi in (True, False):
        info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=alibi)
        slopes = A.alibi_slopes(heads) if alibi else None

        def grads(attend, info=info, slopes=slopes):
            def loss(q, k, v):
                return jnp.sum(attend(q, k, v, info, slopes) * ct)

            return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

        ours = grads(lambda *a: A.attend_dot_product(*a, "xla"))
        ref = grads(A.attend_xla)
        np.testing.assert_allclose(float(ours[0]), float(ref[0]), rtol=1e-4)
        for a, b in zip(ours[1], ref[1], strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4)


needs_cudnn = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU"
)


@needs_cudnn
@pytest.mark.parametrize(
    "head_dim,segments",
    [(64, _long_segments), (96, _long_segments), (128, _long_segments), (64, _many_segments)],
)
def test_cudnn_attention_matches_float32_attention_on_long_segments(head_dim, segments):
    """On a GPU: cuDNN's output and q/k/v gradients in bfloat16, segments and ALiBi as
    columns (64, 96) or mask and bias (128), against float32 attention, with positions
    up to 2007 (`_long_segments`) or 41 segments (`_many_segments`)."""
    (q, k, v), info, slopes, valid, ct = _bloom_attention_case(
        16, 2048, head_dim, seed=7, segments=segments
    )

    def run(attend, dtype):
        def loss(q, k, v):
            return jnp.sum(attend(q, k, v).astype(jnp.float32) * ct)

        qkv = [x.astype(dtype) for x in (q, k, v)]
        out = attend(*qkv).astype(jnp.float32)
        return out, jax.grad(loss, argnums=(0, 1, 2))(*qkv)

    out, grads = run(lambda q, k, v: A.attend_dot_product(q, k, v, info, slopes), jnp.bfloat16)
    ref_out, ref_grads = run(
        lambda q, k, v: A._attend(q, k, v, info.mask, info.rel_pos, slopes), jnp.float32
    )
    assert float(jnp.max(jnp.abs(jnp.where(valid, out - ref_out, 0)))) < 0.03
    for g, r in zip(grads, ref_grads, strict=True):
        err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)))
        assert err < 0.02 * float(jnp.max(jnp.abs(r)))


@pytest.mark.parametrize("heads,kv_heads,alibi", [(6, 6, True), (4, 2, True), (8, 1, False)])
def test_shared_prefix_equals_attention_over_the_repeated_prompt(heads, kv_heads, alibi):
    """Beam-search layout: B = 2 left-padded prompts of P = 5 slots shared by G = 3 rows
    each, rows holding 2 generated tokens of their own (the query is the second). Same as
    plain attention over a per-row cache [prompt slots, own slots]."""
    b, g, p, n, hd = 2, 3, 5, 2, 8
    r = b * g
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    q = jax.random.normal(keys[0], (r, 1, heads, hd))
    pk, pv = (jax.random.normal(x, (b, p, kv_heads, hd)) for x in keys[1:3])
    k, v = (jax.random.normal(x, (r, n, kv_heads, hd)) for x in keys[3:5])
    p_seg = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # item 0 has 2 pads
    p_pos = A.segment_positions(p_seg)
    prefix = A.KVCache(  # the prompts' cache after prefill: [layers=1, B, K, P, Hd]
        k=pk[None].swapaxes(2, 3),
        v=pv[None].swapaxes(2, 3),
        segment_ids=p_seg,
        positions=p_pos,
        index=jnp.full((b,), p, jnp.int32),
    )
    real = jnp.repeat(p_seg.sum(1), g)  # prompt tokens per row
    own_seg = jnp.ones((r, n), jnp.int32)
    own_pos = real[:, None] + jnp.arange(n)[None]
    q_seg, q_pos = own_seg[:, 1:], own_pos[:, 1:]
    slopes = A.alibi_slopes(heads) if alibi else None
    info = A.make_mask_info(q_seg, q_pos, own_seg, own_pos, 1, use_alibi=alibi)
    info = info.replace(prefix=A.make_prefix_info(prefix, q_seg, q_pos, use_alibi=alibi))
    got = A.attend_prefixed(q, k, v, info, slopes, pk, pv)

    rows = jnp.arange(r) // g
    full_k = jnp.concatenate([pk[rows], k], axis=1)
    full_v = jnp.concatenate([pv[rows], v], axis=1)
    full_seg = jnp.concatenate([p_seg[rows], own_seg], axis=1)
    full_pos = jnp.concatenate([p_pos[rows], own_pos], axis=1)
    ref_info = A.make_mask_info(q_seg, q_pos, full_seg, full_pos, p + 1, use_alibi=alibi)
    want = A.attend_xla(q, full_k, full_v, ref_info, slopes)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_attention_matches_naive_reference_with_alibi_and_gqa():
    heads, kv_heads = 4, 2
    q, k, v = _random_qkv(heads, kv_heads, length=5)
    seg = jnp.ones((2, 5), jnp.int32)
    pos = A.segment_positions(seg)
    slopes = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
    out = A.attend_xla(q, k, v, A.make_mask_info(seg, pos, seg, pos, 0, True), slopes)
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    ref = np.zeros_like(q)
    for b in range(2):
        for h in range(heads):
            kh = h // (heads // kv_heads)  # query head h reads kv head h // group
            for i in range(5):
                s = k[b, : i + 1, kh] @ q[b, i, h] / np.sqrt(8)
                s = s + slopes[h] * (np.arange(i + 1) - i)
                p = np.exp(s - s.max())
                ref[b, i, h] = (p / p.sum()) @ v[b, : i + 1, kh]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_segments_do_not_leak():
    """Changing one segment's tokens never changes another segment's outputs."""
    q, k, v = _random_qkv(4, 2)
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 3, 3, 0]] * 2)
    pos = A.segment_positions(seg)
    info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=False)
    base = A.attend_xla(q, k, v, info, None)
    k2 = k.at[:, 3:6].add(5.0)
    v2 = v.at[:, 3:6].add(5.0)
    moved = A.attend_xla(q, k2, v2, info, None)
    np.testing.assert_array_equal(np.asarray(base)[:, :3], np.asarray(moved)[:, :3])
    np.testing.assert_array_equal(np.asarray(base)[:, 6:8], np.asarray(moved)[:, 6:8])
    assert not np.allclose(np.asarray(base)[:, 3:6], np.asarray(moved)[:, 3:6])


@pytest.mark.parametrize("heads,kv_heads,alibi", [(4, 4, True), (4, 2, False)])
def test_query_blocked_causal_attention_equals_one_block(heads, kv_heads, alibi):
    """Causal self-attention skips key blocks above the diagonal (query blocks of 128
    rows at length 256); outputs and gradients equal the unblocked computation."""
    length = 256
    assert A.query_block(length) == 128 and A.query_block(200) == 0
    q, k, v = _random_qkv(heads, kv_heads, length=length)
    seg = np.ones((2, length), np.int32)
    seg[0, 100:] = 2  # a segment boundary inside the first block
    seg[0, 240:] = 0  # trailing padding
    seg = jnp.asarray(seg)
    pos = A.segment_positions(seg)
    slopes = A.alibi_slopes(heads) if alibi else None
    blocked = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=alibi)
    whole = A.make_mask_info(seg, pos, seg, pos, jnp.int32(0), use_alibi=alibi)
    assert blocked.causal_self and not whole.causal_self

    def f(info):
        def loss(q, k, v):
            return jnp.sum(jnp.sin(A.attend_xla(q, k, v, info, slopes)))

        return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)

    (lb, gb), (lw, gw) = f(blocked), f(whole)
    np.testing.assert_allclose(lb, lw, rtol=1e-5)
    for a, b in zip(gb, gw, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_init_cache_shapes_and_take():
    cfg = mc.get_preset("tiny-qwen2")
    cache = A.init_cache(cfg, batch=3, max_len=16)
    assert cache.k.shape == (cfg.layers, 3, cfg.kv_heads, 16, cfg.head_dim)
    assert cache.k.dtype == jnp.float32
    assert cache.segment_ids.shape == cache.positions.shape == (3, 16)
    assert cache.index.shape == (3,)
    assert cache.max_length == 16
    bf16 = A.init_cache(cfg, 1, 4, dtype="bfloat16")
    assert bf16.v.dtype == jnp.bfloat16
    # take() moves rows of every leaf along its batch axis.
    rows = jnp.arange(3)
    filled = A.KVCache(
        k=cache.k + rows[None, :, None, None, None],
        v=cache.v - rows[None, :, None, None, None],
        segment_ids=cache.segment_ids + rows[:, None],
        positions=cache.positions + 10 * rows[:, None],
        index=cache.index + 100 * rows,
    )
    got = filled.take(jnp.array([2, 2, 0, 1]))
    assert got.k.shape == (cfg.layers, 4, cfg.kv_heads, 16, cfg.head_dim)
    np.testing.assert_array_equal(got.k[0, :, 0, 0, 0], [2, 2, 0, 1])
    np.testing.assert_array_equal(got.v[-1, :, -1, -1, -1], [-2, -2, 0, -1])
    np.testing.assert_array_equal(got.segment_ids[:, 0], [2, 2, 0, 1])
    np.testing.assert_array_equal(got.positions[:, -1], [20, 20, 0, 10])
    np.testing.assert_array_equal(got.index, [200, 200, 0, 100])
