"""Building blocks: the float32-accumulating `dot`, LayerNorm/RMSNorm, Embed, Mlp."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import layers

# Specs used by the model: projections, MLP, output projection, tied/untied head, and
# the fused loss's d hidden (a 32-deep contraction stands in for the vocabulary).
SPECS = {
    "bld,dhtk->blhtk": ((2, 5, 16), (16, 3, 3, 4)),
    "bli,io->blo": ((2, 5, 16), (16, 24)),
    "blhk,hkd->bld": ((2, 5, 3, 4), (3, 4, 16)),
    "...d,vd->...v": ((2, 5, 16), (32, 16)),
    "bcv,vd->bcd": ((2, 5, 32), (32, 16)),
}


def _operands(spec, dtype, seed=0):
    xs, ws = SPECS[spec]
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, xs).astype(dtype), jax.random.normal(kw, ws).astype(dtype)


@pytest.mark.parametrize("spec", list(SPECS))
def test_dot_float32_is_the_plain_einsum(spec):
    x, w = _operands(spec, jnp.float32)
    np.testing.assert_array_equal(layers.dot(spec, x, w), jnp.einsum(spec, x, w))
    out = layers.dot(spec, x, w, jnp.float32)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("spec", list(SPECS))
def test_dot_bfloat16_value_and_gradients(spec):
    """bf16 operands: the float32-accumulated product rounded once to bf16, and
    gradients equal to float32 autodiff of the same product up to bf16 rounding."""
    x, w = _operands(spec, jnp.bfloat16)
    y = layers.dot(spec, x, w)
    assert y.dtype == jnp.bfloat16
    exact = jnp.einsum(spec, x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_array_equal(y, exact.astype(jnp.bfloat16))
    assert layers.dot(spec, x, w, jnp.float32).dtype == jnp.float32

    probe = jax.random.normal(jax.random.PRNGKey(7), y.shape)

    def loss(x, w):
        return jnp.sum(layers.dot(spec, x, w).astype(jnp.float32) * probe)

    def loss_f32(x, w):
        return jnp.sum(jnp.einsum(spec, x, w) * probe)

    dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
    rx, rw = jax.grad(loss_f32, argnums=(0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # The cotangent is rounded to bf16 before each product (one more rounding than
    # the float32 reference): relative error a few bf16 ulps (2^-8) of the scale.
    for got, ref in ((dx, rx), (dw, rw)):
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=0.02 * scale)


def test_dot_bfloat16_backward_has_no_mixed_precision_matmul():
    """The point of the custom VJP on CPU: autodiff of an f32-output matmul would feed
    a float32 cotangent and a bf16 operand to one dot_general (XLA then runs it in
    float32). Every backward matmul here takes two bf16 operands."""
    if jax.default_backend() != "cpu":
        pytest.skip("the custom VJP is the CPU path; elsewhere dot is the plain einsum")
    x, w = _operands("bli,io->blo", jnp.bfloat16)

    def loss(x, w):
        return jnp.sum(layers.dot("bli,io->blo", x, w).astype(jnp.float32))

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)

    def dots(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for sub in jax.core.jaxprs_in_params(eqn.params):
                yield from dots(sub)

    found = list(dots(jaxpr.jaxpr))
    assert len(found) == 3  # forward, d x, d w
    for eqn in found:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eqn.params["preferred_element_type"] == jnp.float32


def _cfg(family, **kw):
    preset = "tiny-bloom" if family == "bloom" else "tiny-llama"
    return dataclasses.replace(mc.get_preset(preset), **kw)


def test_add_bias_sums_its_bfloat16_gradient_in_float32():
    # 4096 tokens, each with cotangent bf16(0.1): in float32 the bias gradient is exact
    # to ~1e-7; a bfloat16 sum (autodiff of `y + b.astype(bf16)`) is off by ~1e-3.
    y = jnp.zeros((8, 512, 4), jnp.bfloat16)
    b = jnp.zeros((4,), jnp.float32)
    g = jnp.full(y.shape, 0.1, jnp.bfloat16)
    out, vjp = jax.vjp(layers.add_bias, y, b)
    dy, db = vjp(g)
    assert out.dtype == jnp.bfloat16 and dy.dtype == jnp.bfloat16 and db.dtype == jnp.float32
    np.testing.assert_allclose(db, 4096 * float(g[0, 0, 0]), rtol=1e-6)
    np.testing.assert_array_equal(dy, g)
    x = jnp.asarray([[1.0, 2.0]], jnp.bfloat16)
    np.testing.assert_array_equal(layers.add_bias(x, jnp.asarray([0.5, -1.0])), [[1.5, 1.0]])


def test_rms_norm_scale_gradient_is_summed_in_float32():
    cfg = dataclasses.replace(mc.get_preset("tiny-llama"), dtype="bfloat16")
    norm = layers.RMSNorm(cfg)
    x = jnp.ones((8, 512, cfg.hidden), jnp.bfloat16)  # normalises to exactly 1
    params = norm.init(jax.random.PRNGKey(0), x)
    out, vjp = jax.vjp(lambda p: norm.apply(p, x), params)
    assert out.dtype == jnp.bfloat16
    (grads,) = vjp(jnp.full(out.shape, 0.1, jnp.bfloat16))
    scale_grad = nn.unbox(grads)["params"]["scale"]
    np.testing.assert_allclose(scale_grad, 4096 * float(jnp.bfloat16(0.1)), rtol=1e-5)


def test_layer_norm_matches_numpy():
    cfg = _cfg("bloom")
    x = np.random.RandomState(0).normal(size=(2, 3, cfg.hidden)).astype(np.float32)
    module = layers.LayerNorm(cfg)
    scale = np.random.RandomState(1).normal(size=cfg.hidden).astype(np.float32)
    bias = np.random.RandomState(2).normal(size=cfg.hidden).astype(np.float32)
    params = {"params": {"scale": scale, "bias": bias}}
    got = module.apply(params, x)
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    want = (x - mean) / np.sqrt(var + cfg.norm_eps) * scale + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rms_norm_matches_numpy():
    cfg = _cfg("llama")
    x = np.random.RandomState(0).normal(size=(2, 3, cfg.hidden)).astype(np.float32)
    module = layers.RMSNorm(cfg)
    scale = np.random.RandomState(1).normal(size=cfg.hidden).astype(np.float32)
    got = module.apply({"params": {"scale": scale}}, x)
    want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + cfg.norm_eps) * scale
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tied_head_is_the_transposed_embedding():
    cfg = _cfg("bloom")
    module = layers.Embed(cfg)
    tokens = jnp.array([[0, 5, 7]])
    params = nn.unbox(module.init(jax.random.PRNGKey(0), tokens))
    table = np.asarray(params["params"]["embedding"])
    np.testing.assert_array_equal(module.apply(params, tokens), table[[[0, 5, 7]]])
    h = np.random.RandomState(0).normal(size=(1, 3, cfg.hidden)).astype(np.float32)
    logits = module.apply(params, h, method=layers.Embed.attend)
    assert logits.shape == (1, 3, cfg.vocab_size) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, h @ table.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["bloom", "llama"])
def test_mlp_matches_numpy(family):
    cfg = _cfg(family)
    x = np.random.RandomState(0).normal(size=(2, 3, cfg.hidden)).astype(np.float32)
    module = layers.Mlp(cfg)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), x))
    # Biases start at zero: give every parameter random values so each one matters.
    rng = np.random.RandomState(1)
    p = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(np.float32), params["params"])
    got = module.apply({"params": p}, x)
    if family == "bloom":
        h = x @ p["up_kernel"] + p["up_bias"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        want = h @ p["down_kernel"] + p["down_bias"]
    else:
        g = x @ p["gate_kernel"]
        want = (g / (1 + np.exp(-g)) * (x @ p["up_kernel"])) @ p["down_kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
