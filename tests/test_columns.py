"""ALiBi and segment runs as extra head columns (models/columns.py): exact sums, the
plan of when they are used, segment runs."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax.models import attention as A
from ecomgpt_jax.models import columns as C


@pytest.mark.parametrize(
    "dtype,head_dim,rel_tol",
    [("bfloat16", 64, 1e-6), ("bfloat16", 96, 1e-6), ("float16", 64, 1e-5)],
)
@pytest.mark.parametrize("runs", [False, True])
def test_head_columns_add_alibi_and_the_run_gap(dtype, head_dim, rel_tol, runs):
    """The extra head columns contribute slope_h * pos_k (+ run_gap * run_k) after the
    kernel's scale, to float32 rounding, for positions and runs up to 2**16 - 1; the
    original columns are unchanged."""
    heads, scale = 12, 1.0 / math.sqrt(head_dim)
    rng = np.random.RandomState(0)
    q = jnp.asarray(rng.randn(1, 3, heads, head_dim), dtype)
    k = jnp.asarray(rng.randn(1, 5, heads, head_dim), dtype)
    pos = jnp.asarray([[0, 1, 255, 4097, 65535]], jnp.int32)
    key_runs = jnp.asarray([[0, 3, 300, 257, 65535]], jnp.int32) if runs else None
    slopes = A.alibi_slopes(heads)
    q2, k2 = C.head_columns(q, k, scale, slopes, pos, key_runs)
    n = C.ALIBI_COLUMNS + C.RUN_COLUMNS * runs
    assert q2.shape[-1] == C.columns_width(head_dim, n) == k2.shape[-1]
    assert q2.shape[-1] % 8 == 0 and head_dim + n <= q2.shape[-1] < head_dim + n + 8
    np.testing.assert_array_equal(np.asarray(q2[..., :head_dim]), np.asarray(q))
    np.testing.assert_array_equal(np.asarray(k2[..., :head_dim]), np.asarray(k))
    # The extra products in float64 (each bf16 / f16 value is exact there), the ALiBi
    # columns (the first six) and the run columns (the next two) each on their own.
    qx = np.asarray(q2[..., head_dim:], np.float64)
    kx = np.asarray(k2[..., head_dim:], np.float64)

    def part(cols):
        return np.einsum("blhd,bshd->bhls", qx[..., cols], kx[..., cols]) * scale

    want_alibi = slopes.astype(np.float64)[None, :, None, None] * np.asarray(pos, np.float64)[0]
    want_alibi = np.broadcast_to(want_alibi, (1, heads, 3, 5))
    np.testing.assert_allclose(part(slice(0, 6)), want_alibi, rtol=rel_tol, atol=1e-12)
    want = want_alibi
    if runs:
        gap = C.run_gap(scale)
        assert gap >= C.RUN_GAP and gap / scale == 2 ** round(math.log2(gap / scale))
        want_runs = np.broadcast_to(gap * np.asarray(key_runs, np.float64)[0], want.shape)
        np.testing.assert_array_equal(part(slice(6, 8)), want_runs)  # exact
        want = want_alibi + want_runs
    np.testing.assert_array_equal(part(slice(n, None)), 0)  # the padding columns
    # Each product is exact in float32, so float32 accumulation only rounds the sum.
    extra32 = jnp.einsum(
        "blhd,bshd->bhls",
        q2[..., head_dim:],
        k2[..., head_dim:],
        preferred_element_type=jnp.float32,
    ) * jnp.float32(scale)
    # (All terms are >= 0 here, so each rounding is within an ulp of the element's sum.)
    np.testing.assert_allclose(np.asarray(extra32, np.float64), want, rtol=8 * 2**-24, atol=0)


def test_segment_runs_count_changes_of_segment_id():
    seg = jnp.array([[0, 0, 1, 1, 1, 2, 2, 0], [3, 3, 3, 3, 3, 3, 3, 3]])
    np.testing.assert_array_equal(
        np.asarray(C.segment_runs(seg)), [[0, 0, 1, 1, 1, 2, 2, 3], [0] * 8]
    )


def test_columns_are_used_only_where_they_fit():
    assert [C.columns_width(d) for d in (16, 64, 96, 122, 128)] == [24, 72, 104, 128, 136]
    assert [C.columns_width(d, 8) for d in (16, 64, 96, 120, 128)] == [24, 72, 104, 128, 136]
    bf16, plan = jnp.bfloat16, C.plan_columns
    # BLOOM's 64 and 96: ALiBi and the segment runs both (causal self-attention).
    assert plan(64, 2048, bf16, alibi=True, runs=True) == (True, True)
    assert plan(96, 2**16, bf16, alibi=True, runs=True) == (True, True)
    assert plan(64, 2048, jnp.float32, alibi=True, runs=False) == (True, False)
    assert plan(64, 2048, bf16, alibi=False, runs=True) == (False, True)  # Qwen2.5-0.5B
    # 122 + 6 fits 128, + 8 does not: ALiBi alone, the mask stays.
    assert plan(122, 2048, bf16, alibi=True, runs=True) == (True, False)
    assert plan(128, 2048, bf16, alibi=True, runs=True) == (False, False)  # explicit bias
    assert plan(128, 2048, bf16, alibi=False, runs=True) == (False, False)  # Llama: mask
    assert plan(64, 2**16 + 1, bf16, alibi=True, runs=True) == (False, False)  # hi / lo
    assert plan(64, 2048, jnp.float16, alibi=True, runs=True) == (False, False)  # mask value
    assert plan(64, 2048, bf16, alibi=False, runs=False) == (False, False)
