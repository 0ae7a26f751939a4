"""Building blocks: dtype helpers, the matmul `dot`, norms, embeddings, MLPs.

Every parameter is created through `param()` so it carries logical axis names
(constants from `ecomgpt_jax.partitioning`); the one rules table there decides
the sharding. Parameters are stored in `cfg.param_dtype` and cast to the compute
dtype `cfg.dtype` where used. Norm statistics are always computed in float32. Weight
matmuls go through `dot` (float32 accumulation; see there for why it matters on CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecomgpt_jax import partitioning as P
from ecomgpt_jax.models.config import ModelConfig

Axes = tuple[str | None, ...]

# BLOOM and Llama both initialise with N(0, 0.02) (HF `initializer_range`).
INIT_STD = 0.02


def dtype_of(name: str) -> jnp.dtype:
    """ "bfloat16" -> jnp.bfloat16, etc."""
    return jnp.dtype(name)


def param(module: nn.Module, name: str, shape, axes: Axes, init: Callable | None = None):
    """Declares a parameter with logical axis names `axes` (one per dimension); returns
    it as a `cfg.param_dtype` array of `shape`."""
    if len(axes) != len(shape):
        raise ValueError(f"{name}: {len(shape)} dims but axes {axes}")
    init = init or nn.initializers.normal(INIT_STD)
    dtype = dtype_of(module.cfg.param_dtype)
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), dtype)


def _split_spec(spec: str) -> tuple[str, str, str]:
    ins, out = spec.split("->")
    x, w = ins.split(",")
    return x, w, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _dot_f32_acc(spec, x, w, out_dtype):
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(out_dtype)


def _dot_f32_acc_fwd(spec, x, w, out_dtype):
    return _dot_f32_acc(spec, x, w, out_dtype), (x, w)


def _dot_f32_acc_bwd(spec, out_dtype, res, g):
    # Every index of our specs appears in exactly two of the three terms, so each
    # gradient is the einsum of the other two. The cotangent is cast to the operands'
    # dtype first: autodiff of the forward would hand a float32 cotangent to a mixed
    # float32 x bfloat16 matmul, which XLA runs in float32.
    x, w = res
    xs, ws, out = _split_spec(spec)
    g = g.astype(x.dtype)
    dx = _dot_f32_acc(f"{out},{ws}->{xs}", g, w, x.dtype)
    dw = _dot_f32_acc(f"{xs},{out}->{ws}", x, g, w.dtype)
    return dx, dw


_dot_f32_acc.defvjp(_dot_f32_acc_fwd, _dot_f32_acc_bwd)


def dot(spec: str, x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """`jnp.einsum(spec, x, w)` with float32 accumulation, as `out_dtype` (default x's):
    shapes as `spec` says, e.g. "bli,io->blo": x [B, L, I], w [I, O] -> [B, L, O].

    Both operands must have one dtype (the compute dtype), and each index of `spec`
    must appear in exactly two of its three terms (true of every matmul here).

    Why: XLA:CPU runs bfloat16 matmuls on AMX/oneDNN-class kernels only when they
    accumulate into and output float32 (2-core Sapphire Rapids, 2048^3: 511 GFLOP/s
    vs 135 for bf16 -> bf16). So on CPU, bf16 matmuls (forward and, through the custom
    VJP, backward) output float32 and are cast back. On GPU/TPU the accumulation is
    float32 inside the kernel anyway, and the bf16 output halves the writes: there
    this is the plain einsum. float32 operands are always the plain einsum.
    """
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    if x.dtype != jnp.float32 and jax.default_backend() == "cpu":
        return _dot_f32_acc(spec, x, w, out_dtype)
    if out_dtype == jnp.float32:
        return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)
    return jnp.einsum(spec, x, w).astype(out_dtype)


def head_logits(spec: str, x: jax.Array, w: jax.Array, logits_dtype: str) -> jax.Array:
    """The LM-head matmul `dot(spec, x, w)` (e.g. x [..., D], w [V, D] -> [..., V])
    written in `logits_dtype` (ModelConfig's), returned as float32: a no-op cast for
    "float32"; for "bfloat16", logits rounded to bfloat16, which XLA keeps in memory and
    widens where they are read."""
    return dot(spec, x, w, dtype_of(logits_dtype)).astype(jnp.float32)


def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
    """y [..., *b.shape] + b (rounded to y's dtype, as HF autocast does), added in
    float32 and returned in y's dtype.

    Why float32: the bias gradient is the cotangent summed over every token (8 x 2048
    of them in a batch). Autodiff of a bfloat16 add sums it in bfloat16, which loses
    most of its precision, and XLA:CPU runs such low-precision sums as tree-shaped
    reduce-windows (45 ms for 8 x 512 x 2048 on 2 cores; 1 ms as a float32 sum).
    """
    return (y.astype(jnp.float32) + b.astype(y.dtype).astype(jnp.float32)).astype(y.dtype)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Sharding hint on an activation x (one logical name in `axes` per dimension; the
    shape is unchanged); a no-op outside a mesh + rules context."""
    return nn.with_logical_constraint(x, axes)


class LayerNorm(nn.Module):
    """BLOOM's LayerNorm with scale and bias over the last axis ([..., D] -> [..., D])."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = param(self, "scale", (d,), (P.EMBED,), nn.initializers.ones)
        bias = param(self, "bias", (d,), (P.EMBED,), nn.initializers.zeros)
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.cfg.norm_eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(dtype_of(self.cfg.dtype))


class RMSNorm(nn.Module):
    """Llama's RMSNorm ([..., D] -> [..., D]); no mean subtraction, no bias."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = param(self, "scale", (x.shape[-1],), (P.EMBED,), nn.initializers.ones)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.cfg.norm_eps)
        # HF casts back to the activation dtype before multiplying by the weight; the
        # product is taken in float32 (the same rounded result as a bfloat16 multiply)
        # so that the scale's gradient, a sum over every token, is summed in float32
        # (see `add_bias`).
        dtype = dtype_of(self.cfg.dtype)
        f32 = jnp.float32
        return (y.astype(dtype).astype(f32) * scale.astype(dtype).astype(f32)).astype(dtype)


def Norm(cfg: ModelConfig, name: str) -> nn.Module:
    """The family's norm: LayerNorm for BLOOM, RMSNorm for Llama."""
    return (LayerNorm if cfg.family == "bloom" else RMSNorm)(cfg, name=name)


class Embed(nn.Module):
    """Token embedding table `embedding` [V, D]; also the tied LM head."""

    cfg: ModelConfig

    def setup(self):
        self.embedding = param(
            self, "embedding", (self.cfg.vocab_size, self.cfg.hidden), (P.VOCAB, P.EMBED)
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int [B, L] -> [B, L, D] in the compute dtype."""
        x = jnp.take(self.embedding, tokens, axis=0)
        return x.astype(dtype_of(self.cfg.dtype))

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied LM head: [..., D] -> float32 logits [..., V]."""
        dtype = dtype_of(self.cfg.dtype)
        w = self.embedding.astype(dtype)
        return head_logits("...d,vd->...v", x.astype(dtype), w, self.cfg.logits_dtype)


class LMHead(nn.Module):
    """Untied LM head `kernel` [D, V] (Llama 3, Qwen2.5-7B)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., D] -> float32 logits [..., V]."""
        w = param(self, "kernel", (self.cfg.hidden, self.cfg.vocab_size), (P.EMBED, P.VOCAB))
        dtype = dtype_of(self.cfg.dtype)
        return head_logits("...d,dv->...v", x.astype(dtype), w.astype(dtype), self.cfg.logits_dtype)


class Mlp(nn.Module):
    """Feed-forward block, [B, L, D] -> [B, L, D].

    BLOOM: down(gelu_tanh(up(x))) with biases (`up`, `down`: kernel + bias).
    Llama: down(silu(gate(x)) * up(x)) without biases (SwiGLU).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        dtype = dtype_of(cfg.dtype)
        d, f = cfg.hidden, cfg.mlp_dim

        def dense(name, x, shape, axes, bias):
            w = param(self, f"{name}_kernel", shape, axes)
            y = dot("bli,io->blo", x, w.astype(dtype))
            if bias:
                b = param(self, f"{name}_bias", shape[-1:], axes[-1:], nn.initializers.zeros)
                y = add_bias(y, b)
            return y

        bloom = cfg.family == "bloom"
        h = dense("up", x, (d, f), (P.EMBED, P.MLP), bloom)
        if bloom:
            h = jax.nn.gelu(h, approximate=True)  # == HF bloom_gelu_forward (tanh form)
        else:
            h = jax.nn.silu(dense("gate", x, (d, f), (P.EMBED, P.MLP), False)) * h
        h = constrain(h, (P.BATCH, P.LENGTH, P.ACT_MLP))
        return dense("down", h, (f, d), (P.MLP, P.EMBED), bloom)
