"""Fused chunked LM-head cross-entropy vs the plain full-logits computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder, losses


def _inputs(b=2, length=12, d=8, vocab=37, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    hidden = jax.random.normal(k[0], (b, length, d))
    w = jax.random.normal(k[1], (vocab, d))
    targets = jax.random.randint(k[2], (b, length), 0, vocab)
    weights = (jax.random.uniform(k[3], (b, length)) > 0.3).astype(jnp.float32)
    return hidden, w, targets, weights


def _reference(hidden, w, targets, weights):
    """Float64 numpy: sum of weighted CE and of weighted argmax hits."""
    h, w, t, wt = (np.asarray(x, np.float64) for x in (hidden, w, targets, weights))
    logits = h @ w.T
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(logits, t.astype(int)[..., None], -1)[..., 0]
    return ((lse - picked) * wt).sum(), ((logits.argmax(-1) == t) * wt).sum()


@pytest.mark.parametrize("chunk", [3, 4, 12])
def test_loss_and_accuracy_match_full_logits(chunk):
    hidden, w, targets, weights = _inputs()
    loss, correct = jax.jit(losses.chunked_cross_entropy, static_argnums=(4,))(
        hidden, w, targets, weights, chunk
    )
    ref_loss, ref_correct = _reference(hidden, w, targets, weights)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert float(correct) == ref_correct


def _plain_loss(hidden, w, targets, weights):
    logits = jnp.einsum("bld,vd->blv", hidden, w)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return jnp.sum(ce * weights)


def test_gradients_match_autodiff_of_full_logits_tied_and_untied():
    hidden, w, targets, weights = _inputs(seed=1)

    def fused(h, w, vocab_major):
        ww = w if vocab_major else w.T
        return 2.5 * losses.chunked_cross_entropy(h, ww, targets, weights, 4, vocab_major)[0]

    ref = jax.grad(lambda h, w: 2.5 * _plain_loss(h, w, targets, weights), (0, 1))(hidden, w)
    for vocab_major in (True, False):
        got = jax.jit(jax.grad(fused, (0, 1)), static_argnums=2)(hidden, w, vocab_major)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, atol=2e-5)


def _answer_weights(counts, length):
    """Rows whose last counts[i] positions are weighted (answers end a packed row)."""
    return jnp.asarray([[0.0] * (length - n) + [1.0] * n for n in counts])


def test_chunks_past_the_weighted_positions_are_never_evaluated():
    # 4 weighted positions per row, chunk 4: compaction puts them in chunk 0, and the
    # two chunks after it hold only weight-0 positions, which must be skipped. Their
    # hidden states are NaN here: any evaluation of them would make the sums NaN.
    hidden, w, targets, _ = _inputs(seed=4)
    weights = _answer_weights([4, 4], 12)
    hidden = jnp.where(weights[..., None] > 0, hidden, jnp.nan)
    f = jax.jit(
        jax.value_and_grad(losses.chunked_cross_entropy, (0, 1), has_aux=True), static_argnums=4
    )
    (loss, correct), (dh, dw) = f(hidden, w, targets, weights, 4)
    ref_loss, ref_correct = _reference(hidden[:, 8:], w, targets[:, 8:], weights[:, 8:])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert float(correct) == ref_correct
    ref_dh, ref_dw = jax.grad(_plain_loss, (0, 1))(hidden[:, 8:], w, targets[:, 8:], weights[:, 8:])
    np.testing.assert_allclose(dh[:, 8:], ref_dh, atol=2e-5)
    np.testing.assert_array_equal(dh[:, :8], 0.0)
    np.testing.assert_allclose(dw, ref_dw, atol=2e-5)


@pytest.mark.parametrize("counts", [[0, 0], [1, 12], [5, 2], [12, 12]])
def test_rows_with_different_answer_counts_match_full_logits(counts):
    hidden, w, targets, _ = _inputs(seed=5)
    weights = _answer_weights(counts, 12) * jnp.array([[2.0], [0.5]])
    f = jax.jit(
        jax.value_and_grad(losses.chunked_cross_entropy, (0, 1), has_aux=True), static_argnums=4
    )
    (loss, correct), (dh, dw) = f(hidden, w, targets, weights, 3)
    ref_loss, ref_correct = _reference(hidden, w, targets, weights)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert float(correct) == ref_correct
    ref_dh, ref_dw = jax.grad(_plain_loss, (0, 1))(hidden, w, targets, weights)
    np.testing.assert_allclose(dh, ref_dh, atol=2e-5)
    np.testing.assert_allclose(dw, ref_dw, atol=2e-5)


def test_argmax_ties_count_the_first_maximum_only():
    # Every logit is 0: jnp.argmax picks id 0, so only target 0 counts as correct.
    hidden = jnp.zeros((1, 4, 3))
    w = jnp.ones((5, 3))
    targets = jnp.array([[0, 1, 4, 0]])
    _, correct = losses.chunked_cross_entropy(hidden, w, targets, jnp.ones((1, 4)), 2)
    assert float(correct) == 2.0


def test_bfloat16_hidden_gives_float32_sums_and_param_dtype_grads():
    hidden, w, targets, weights = _inputs(seed=2)
    h16 = hidden.astype(jnp.bfloat16)
    (loss, correct), (dh, dw) = jax.value_and_grad(
        lambda h, w: losses.chunked_cross_entropy(h, w, targets, weights, 6), (0, 1), has_aux=True
    )(h16, w)
    assert loss.dtype == correct.dtype == jnp.float32
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    # The matmuls take w rounded to bfloat16 and accumulate in float32: the loss is the
    # float64 one of those inputs (measured: 3e-8 relative; 3e-4 against float32 w).
    w16 = w.astype(jnp.bfloat16).astype(jnp.float32)
    ref_loss, _ = _reference(h16.astype(jnp.float32), w16, targets, weights)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)

    def full_logits(h, w):
        logits = jnp.einsum("bld,vd->blv", h, w)
        picked = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        return jnp.sum((jax.nn.logsumexp(logits, -1) - picked) * weights)

    # Gradients: float32 autodiff of the same inputs, up to the bfloat16 rounding of the
    # softmax in the backward matmuls (measured max 0.0085 for dh, 0.0026 for dw, of ~3.4).
    ref_dh, ref_dw = jax.grad(full_logits, (0, 1))(h16.astype(jnp.float32), w16)
    np.testing.assert_allclose(np.asarray(dh, np.float32), ref_dh, atol=0.02)
    np.testing.assert_allclose(dw, ref_dw, atol=0.006)


def test_bfloat16_logits_are_the_float32_logits_rounded():
    """logits_dtype="bfloat16": loss, accuracy and gradients are those of the float32
    logits rounded to bfloat16 (autodiff of that reference, the rounding passing the
    gradient straight through), and differ from float32's."""
    hidden, w, targets, weights = _inputs(seed=4)

    def reference(h, w):
        exact = jnp.einsum("bld,vd->blv", h, w)
        rounded = exact.astype(jnp.bfloat16).astype(jnp.float32)
        # Straight through: autodiff of astype would round the logits' cotangent too.
        logits = exact + jax.lax.stop_gradient(rounded - exact)
        picked = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        ce = jax.nn.logsumexp(logits, -1) - picked
        return jnp.sum(ce * weights), jnp.sum((jnp.argmax(logits, -1) == targets) * weights)

    def ours(logits_dtype):
        def f(h, w):
            return losses.chunked_cross_entropy(h, w, targets, weights, 4, True, logits_dtype)

        return jax.value_and_grad(f, (0, 1), has_aux=True)(hidden, w)

    (loss, correct), grads = ours("bfloat16")
    (ref_loss, ref_correct), ref_grads = jax.value_and_grad(reference, (0, 1), has_aux=True)(
        hidden, w
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert correct == ref_correct
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5)
    (loss32, _), _ = ours("float32")
    assert abs(float(loss32 - loss)) > 1e-5 * float(loss32)  # float32 noise: ~1e-7


def test_matches_decoder_logits_with_head_weights():
    for preset in ("tiny-bloom", "tiny-llama"):  # tied [V, D] and untied [D, V] heads
        cfg = mc.get_preset(preset)
        model = decoder.Decoder(cfg)
        tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 8)))
        params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens))["params"]
        hidden = model.apply({"params": params}, tokens, return_hidden=True)
        logits = model.apply({"params": params}, tokens)
        targets = jnp.roll(tokens, -1, axis=1)
        weights = jnp.ones(tokens.shape)
        w, vocab_major = losses.head_weights(cfg, params)
        assert vocab_major == cfg.tie_embeddings
        loss, _ = losses.chunked_cross_entropy(hidden, w, targets, weights, 4, vocab_major)
        ce = (
            jax.nn.logsumexp(logits, -1)
            - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        )
        np.testing.assert_allclose(loss, jnp.sum(ce), rtol=1e-5)


def _hlo_computations_with(text: str, op: str) -> set[str]:
    """Names of the HLO computations (ENTRY, loop bodies, branches...) using `op`."""
    found, current = set(), None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
        elif f" {op}(" in line or f" {op}-start(" in line:
            found.add(current)
    return found


@pytest.mark.parametrize("answers", [None, [0, 3, 4, 1]])
def test_sharded_mesh_gives_the_same_loss_and_gradients(answers):
    """Batch over data x fsdp, head weights over fsdp x tensor (8 simulated devices);
    with answer-style weights (per-row counts, one row without any) the second chunk is
    skipped on every device. The head is gathered once, outside the chunk loop."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Spec

    from ecomgpt_jax import partitioning as P

    hidden, w, targets, weights = _inputs(b=4, length=8, d=8, vocab=40, seed=3)
    if answers is not None:
        weights = _answer_weights(answers, 8)

    def f(h, w):
        return losses.chunked_cross_entropy(h, w, targets, weights, 4)[0]

    ref = jax.jit(jax.value_and_grad(f, (0, 1)))(hidden, w)
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))
    h_s = jax.device_put(hidden, NamedSharding(mesh, Spec(("data", "fsdp"))))
    w_s = jax.device_put(w, NamedSharding(mesh, Spec("tensor", "fsdp")))
    with jax.set_mesh(mesh), P.axis_rules():
        step = jax.jit(jax.value_and_grad(f, (0, 1)))
        loss, (dh, dw) = step(h_s, w_s)
        hlo = step.lower(h_s, w_s).compile().as_text()
    np.testing.assert_allclose(loss, ref[0], rtol=1e-5)
    np.testing.assert_allclose(dh, ref[1][0], atol=1e-5)
    np.testing.assert_allclose(dw, ref[1][1], atol=1e-5)
    assert _hlo_computations_with(hlo, "all-gather") == {"ENTRY"}


def test_bad_shapes_and_chunks_are_rejected():
    hidden, w, targets, weights = _inputs()
    with pytest.raises(ValueError, match="chunk 5 must divide 12"):
        losses.chunked_cross_entropy(hidden, w, targets, weights, 5)
    with pytest.raises(ValueError, match="share"):
        losses.chunked_cross_entropy(hidden, w, targets[:, :6], weights, 3)
