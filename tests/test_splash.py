"""Splash attention (Pallas, interpret mode on CPU) vs the XLA path: values, gradients,
sharded meshes, and the decoder with attention_impl="splash"."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax import partitioning as P
from ecomgpt_jax.models import attention as A
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder, splash

LENGTH = 128


def _packed(batch=2, length=LENGTH):
    """Segment ids [B, L]: row 0 holds 3 sequences then padding, row 1 one sequence."""
    seg = np.zeros((batch, length), np.int32)
    seg[0, :40], seg[0, 40:90], seg[0, 90:120] = 1, 2, 3
    seg[1, :] = 1
    return jnp.asarray(seg)


def _qkv(heads, kv_heads, batch=2, hd=16, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(k1, (batch, LENGTH, heads, hd))
    k = jax.random.normal(k2, (batch, LENGTH, kv_heads, hd))
    v = jax.random.normal(k3, (batch, LENGTH, kv_heads, hd))
    return q, k, v


def _xla(q, k, v, seg):
    pos = A.segment_positions(seg)
    return A.attend_xla(q, k, v, A.make_mask_info(seg, pos, seg, pos, 0, False), None)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_values_and_gradients_match_xla_attention(heads, kv_heads):
    q, k, v = _qkv(heads, kv_heads)
    seg = _packed()
    valid = (seg != 0)[:, :, None, None]  # padding outputs are unused (module docstring)
    probe = jax.random.normal(jax.random.PRNGKey(3), q.shape) * valid

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, seg) * probe)

    got = splash.attend_splash(q, k, v, seg)
    want = _xla(q, k, v, seg)
    np.testing.assert_allclose(got * valid, want * valid, atol=2e-5)
    grads = jax.grad(loss(splash.attend_splash), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(_xla), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=5e-5)


# kv_heads 1 on a tensor axis of 2: heads do not split, each shard computes them all.
@pytest.mark.parametrize(
    "shape,kv_heads", [((2, 2, 2), 4), ((1, 2, 4), 4), ((8, 1, 1), 4), ((2, 2, 2), 1)]
)
def test_sharded_equals_unsharded(shape, kv_heads):
    q, k, v = _qkv(8, kv_heads, batch=8)
    seg = jnp.tile(_packed(), (4, 1))
    want = splash.attend_splash(q, k, v, seg)
    mesh = P.make_mesh(P.MeshConfig(shape))
    with jax.set_mesh(mesh), P.axis_rules():
        got = jax.jit(splash.attend_splash)(q, k, v, seg)
        jaxpr = str(jax.make_jaxpr(splash.attend_splash)(q, k, v, seg))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert "shard_map" in jaxpr  # the kernel ran per shard, not on gathered arrays


def test_decoder_with_splash_matches_xla(monkeypatch):
    """Also: the kernel first built inside the model's traces (as in training) is cached
    with concrete arrays; it leaked nn.scan's tracers before it was built on a thread."""
    splash._kernel.cache_clear()
    calls = []
    kernel = splash.attend_splash
    monkeypatch.setattr(splash, "attend_splash", lambda *a: calls.append(1) or kernel(*a))
    cfg = dataclasses.replace(mc.get_preset("tiny-llama"), max_positions=LENGTH)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, LENGTH), 0, cfg.vocab_size)
    seg = _packed()
    params = decoder.Decoder(cfg).init(jax.random.PRNGKey(1), tokens[:, :8])["params"]
    ours = dataclasses.replace(cfg, attention_impl="splash")
    got = decoder.Decoder(ours).apply({"params": params}, tokens, segment_ids=seg)
    want = decoder.Decoder(cfg).apply({"params": params}, tokens, segment_ids=seg)
    valid = np.asarray(seg != 0)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-4)
    assert calls  # the splash path was taken (nn.scan may trace its body more than once)


def test_bloom_refuses_splash():
    with pytest.raises(mc.ConfigError, match="ALiBi"):
        dataclasses.replace(mc.get_preset("tiny-bloom"), attention_impl="splash")
