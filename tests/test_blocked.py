"""Blocked causal attention (models/blocked.py): values and gradients equal one softmax
over all keys (attention._attend under autodiff), and no [B, H, L, L] residual is kept."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ecomgpt_jax import partitioning
from ecomgpt_jax.models import attention as A
from ecomgpt_jax.models import blocked

LENGTH, BLOCK = 256, 64  # four query blocks


def _inputs(heads, kv_heads, alibi, dtype=jnp.float32, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(k1, (2, LENGTH, heads, 16), dtype)
    k = jax.random.normal(k2, (2, LENGTH, kv_heads, 16), dtype)
    v = jax.random.normal(k3, (2, LENGTH, kv_heads, 16), dtype)
    seg = np.ones((2, LENGTH), np.int32)
    seg[0, 40:] = 2  # a segment boundary inside the first block
    seg[0, 150:] = 3  # and one inside the third
    seg[0, 230:] = 0  # trailing padding
    seg = jnp.asarray(seg)
    pos = A.segment_positions(seg)
    info = A.make_mask_info(seg, pos, seg, pos, 0, use_alibi=alibi)
    slopes = A.alibi_slopes(heads) if alibi else None
    return (q, k, v), info, slopes


def _blocked_fn(info, slopes):
    return lambda q, k, v: blocked.attend_blocked(q, k, v, info.mask, info.rel_pos, slopes, BLOCK)


def _whole_fn(info, slopes):
    return lambda q, k, v: A._attend(q, k, v, info.mask, info.rel_pos, slopes)


def _value_and_grads(fn, qkv):
    # A non-linear loss, so that every output element's cotangent differs.
    def loss(q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(*qkv)


@pytest.mark.parametrize(
    "heads,kv_heads,alibi", [(4, 4, True), (6, 6, True), (4, 2, False), (4, 1, False)]
)
def test_values_and_gradients_equal_one_softmax_over_all_keys(heads, kv_heads, alibi):
    qkv, info, slopes = _inputs(heads, kv_heads, alibi)
    out_b = jax.jit(_blocked_fn(info, slopes))(*qkv)
    out_w = jax.jit(_whole_fn(info, slopes))(*qkv)
    np.testing.assert_allclose(out_b, out_w, rtol=1e-5, atol=1e-5)
    (lb, gb), (lw, gw) = (
        _value_and_grads(_blocked_fn(info, slopes), qkv),
        _value_and_grads(_whole_fn(info, slopes), qkv),
    )
    np.testing.assert_allclose(lb, lw, rtol=1e-5)
    for name, a, b in zip("qkv", gb, gw, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bfloat16_gradients_track_float32():
    """bf16 inputs: float32 scores/softmax inside, bf16 gradients out, within bf16
    rounding of the float32 computation."""
    qkv32, info, slopes = _inputs(4, 2, alibi=True)
    qkv16 = tuple(x.astype(jnp.bfloat16) for x in qkv32)
    _, g16 = _value_and_grads(_blocked_fn(info, slopes), qkv16)
    _, g32 = _value_and_grads(_whole_fn(info, slopes), tuple(x.astype(jnp.float32) for x in qkv16))
    for name, a, b in zip("qkv", g16, g32, strict=True):
        assert a.dtype == jnp.bfloat16, name
        scale = float(jnp.max(jnp.abs(b)))
        err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
        assert err < 0.02 * scale, (name, err, scale)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_sharded_over_batch_and_heads_equals_one_device(kv_heads):
    """Under jit with batch over `data` and heads over `tensor` (8 simulated devices),
    the custom VJP (head-major transposes, sliced accumulation) partitions to the same
    values and gradients."""
    qkv, info, slopes = _inputs(4, kv_heads, alibi=kv_heads == 4)
    mesh = partitioning.make_mesh(partitioning.MeshConfig((2, 2, 2)))
    heads = NamedSharding(mesh, PartitionSpec("data", None, "tensor", None))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    sharded = tuple(jax.device_put(x, heads) for x in qkv)
    mask = jax.device_put(info.mask, rows)
    rel = None if info.rel_pos is None else jax.device_put(info.rel_pos, rows)

    def loss(q, k, v, mask, rel):
        out = blocked.attend_blocked(q, k, v, mask, rel, slopes, BLOCK)
        return jnp.sum(jnp.sin(out))

    grad = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
    (ls, gs), (l1, g1) = grad(*sharded, mask, rel), grad(*qkv, info.mask, info.rel_pos)
    assert gs[0].sharding.is_equivalent_to(heads, 4)
    np.testing.assert_allclose(ls, l1, rtol=1e-5)
    for name, a, b in zip("qkv", gs, g1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def _largest_residual(fn, qkv) -> int:
    """Size of the largest array the backward pass keeps from the forward."""
    _, vjp = jax.vjp(fn, *qkv)
    return max(x.size for x in jax.tree.leaves(vjp))


def test_backward_keeps_no_per_head_score_matrix():
    """Residuals are q, k, v, the output, the log-sum-exp and the (head-shared) mask and
    ALiBi distances; autodiff of the one-block softmax keeps [B, H, L, L] probabilities."""
    heads = 4
    qkv, info, slopes = _inputs(heads, heads, alibi=True)
    per_head_scores = 2 * heads * LENGTH * LENGTH
    assert _largest_residual(_blocked_fn(info, slopes), qkv) < per_head_scores
    assert _largest_residual(_whole_fn(info, slopes), qkv) >= per_head_scores


def test_block_must_divide_length():
    qkv, info, slopes = _inputs(2, 2, alibi=False)
    with pytest.raises(ValueError, match="block 96 must divide length 256"):
        blocked.attend_blocked(*qkv, info.mask, info.rel_pos, slopes, 96)
