"""Train step: loss on answer tokens, schedule, decay mask, accumulation, sharding."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ecomgpt_jax import partitioning as P
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder
from ecomgpt_jax.models.config import ConfigError

# Tiny BLOOM with 4 heads so a tensor axis of 4 divides heads, mlp and vocab.
CFG = dataclasses.replace(
    model_config.get_preset("tiny-bloom"),
    hidden=64,
    heads=4,
    kv_heads=4,
    head_dim=16,
    mlp_dim=256,  # BLOOM: 4 * hidden
    vocab_size=256,
)
B, L = 8, 32


def packed_batch(seed: int, batch: int = B, length: int = L) -> dict[str, np.ndarray]:
    """Two packed examples per row, loss weights on each example's second half,
    uneven answer counts across rows (so per-row means would differ from ours)."""
    rs = np.random.RandomState(seed)
    tokens = rs.randint(2, CFG.vocab_size, (batch, length + 1)).astype(np.int32)
    seg = np.zeros((batch, length), np.int32)
    pos = np.zeros((batch, length), np.int32)
    w = np.zeros((batch, length), np.float32)
    for r in range(batch):
        cut = rs.randint(4, length - 8)
        end = length - rs.randint(0, 4)  # some padding at the end
        for s, (a, b) in enumerate([(0, cut), (cut, end)], start=1):
            seg[r, a:b] = s
            pos[r, a:b] = np.arange(b - a)
            answer = a + rs.randint(1, b - a)
            w[r, answer:b] = 1.0
    return {
        ts.INPUTS: tokens[:, :-1] * (seg > 0),
        ts.TARGETS: tokens[:, 1:] * (seg > 0),
        ts.WEIGHTS: w,
        ts.SEGMENT_IDS: seg,
        ts.POSITIONS: pos,
    }


def make_state(model, tx, mesh, params=None):
    with jax.set_mesh(mesh), P.axis_rules():
        layout = ts.state_layout(model, tx, mesh)
        return layout, ts.init_state(model, tx, layout, seed=0, params=params)


def run_steps(model, tx, mesh, batches, step_config=None, params=None):
    """Losses of one jitted step per batch; `params` (host arrays) = the same init anywhere."""
    layout, state = make_state(model, tx, mesh, params)
    with jax.set_mesh(mesh), P.axis_rules():
        step = ts.jit_train_step(
            ts.make_train_step(model, tx, step_config or ts.StepConfig(), layout.shardings.params),
            layout,
            P.data_sharding(mesh),
        )
        losses = []
        for batch in batches:
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
    return state, losses


def one_device_mesh():
    return P.make_mesh(P.MeshConfig((1, 1, 1)), jax.devices()[:1])


def test_schedule_warmup_then_cosine_and_linear():
    cfg = ts.OptimizerConfig(learning_rate=1e-3, warmup_steps=10, final_lr_ratio=0.1)
    lr = ts.learning_rate_schedule(cfg, total_steps=110)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
    # Half-way through the cosine: (1 + cos(pi/2)) / 2 = 0.5 of the way to 0.1 * peak.
    np.testing.assert_allclose(float(lr(60)), 1e-3 * (0.1 + 0.9 * 0.5), rtol=1e-5)
    np.testing.assert_allclose(float(lr(110)), 1e-4, rtol=1e-5)
    lin = ts.learning_rate_schedule(dataclasses.replace(cfg, decay="linear"), total_steps=110)
    np.testing.assert_allclose(float(lin(60)), 1e-3 - 0.5 * 0.9e-3, rtol=1e-5)


@pytest.mark.parametrize(
    "decay, last", [("linear", 0.2125), ("cosine", 0.1 + 0.9 * (1 + math.cos(7 * math.pi / 8)) / 2)]
)
def test_the_last_update_uses_the_schedule_one_step_before_final_lr_ratio(decay, last):
    """10 updates, 2 of warm-up: update s uses schedule(s - 1), so the last one the rate
    7/8 of the way through the decay (linear: 1 - 0.9 * 7/8; cosine: 0.1 + 0.9 * (1 +
    cos(7 pi / 8)) / 2), not final_lr_ratio 0.1, which schedule(10) would give."""
    cfg = ts.OptimizerConfig(
        learning_rate=1.0, warmup_steps=2, decay=decay, final_lr_ratio=0.1, max_grad_norm=0
    )
    schedule = ts.learning_rate_schedule(cfg, total_steps=10)
    # With zero gradients AdamW's update is -lr * weight_decay * param: the rate itself.
    tx = ts.make_optimizer(dataclasses.replace(cfg, weight_decay=1.0), total_steps=10)
    params = {"kernel": jnp.ones(())}
    zeros = {"kernel": jnp.zeros(())}
    opt_state, used = tx.init(params), []
    for _ in range(10):
        updates, opt_state = tx.update(zeros, opt_state, params)
        used.append(-float(updates["kernel"]))
    np.testing.assert_allclose(used[-1], last, rtol=1e-5)
    np.testing.assert_allclose(used, [float(schedule(s)) for s in range(10)], rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 0.1, rtol=1e-6)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"decay": "exp"},
            "OptimizerConfig.decay='exp': must be one of ('cosine', 'linear', 'constant')",
        ),
        (
            {"learning_rate": "2e-5"},
            "OptimizerConfig.learning_rate='2e-5' (LEARNING_RATE): must be a number > 0",
        ),
        (
            {"learning_rate": 0},
            "OptimizerConfig.learning_rate=0 (LEARNING_RATE): must be a number > 0",
        ),
        (
            {"warmup_steps": 10.0},
            "OptimizerConfig.warmup_steps=10.0 (WARMUP_STEPS): must be an integer >= 0",
        ),
        (
            {"final_lr_ratio": "0.1"},
            "OptimizerConfig.final_lr_ratio='0.1': must be a number from 0 to 1",
        ),
        (
            {"final_lr_ratio": 1.5},
            "OptimizerConfig.final_lr_ratio=1.5: must be a number from 0 to 1",
        ),
        ({"b2": 1.0}, "OptimizerConfig.b2=1.0: must be a number >= 0 and < 1"),
        ({"eps": None}, "OptimizerConfig.eps=None: must be a number >= 0"),
        ({"weight_decay": -0.1}, "OptimizerConfig.weight_decay=-0.1: must be a number >= 0"),
        (
            {"max_grad_norm": True},
            "OptimizerConfig.max_grad_norm=True: must be a number (0 or less: no clipping)",
        ),
    ],
)
def test_optimizer_config_names_a_bad_field(config, message):
    with pytest.raises(ConfigError) as info:
        ts.OptimizerConfig(**config)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"num_microbatches": 0},
            "StepConfig.num_microbatches=0 (NUM_MICROBATCHES): must be an integer >= 1",
        ),
        (
            {"num_microbatches": "2"},
            "StepConfig.num_microbatches='2' (NUM_MICROBATCHES): must be an integer >= 1",
        ),
        ({"loss_chunk_size": -8}, "StepConfig.loss_chunk_size=-8: must be an integer >= 0"),
        ({"loss_chunk_size": 8.0}, "StepConfig.loss_chunk_size=8.0: must be an integer >= 0"),
    ],
)
def test_step_config_names_a_bad_field(config, message):
    with pytest.raises(ConfigError) as info:
        ts.StepConfig(**config)
    assert str(info.value) == message


def test_decay_mask_excludes_norms_and_biases():
    params = decoder.abstract_params(CFG)
    mask = ts.decay_mask(params)
    flat = {
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed == [
        "embed/embedding",
        "layers/attn/out_kernel",
        "layers/attn/qkv_kernel",
        "layers/mlp/down_kernel",
        "layers/mlp/up_kernel",
    ]
    assert not flat["final_norm/scale"] and not flat["layers/attn/qkv_bias"]
    # Boxed parameters (used to derive optimizer shardings) give the same mask.
    boxed = ts.decay_mask(decoder.abstract_params(CFG, boxed=True))
    assert jax.tree.leaves(boxed) == jax.tree.leaves(mask)


def test_weight_decay_only_where_masked():
    cfg = ts.OptimizerConfig(learning_rate=0.1, weight_decay=0.5, max_grad_norm=0)
    tx = ts.make_optimizer(cfg, total_steps=10)
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "ln": {"scale": jnp.ones(2)},
    }
    params["final_norm"] = {"kernel": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
    np.testing.assert_array_equal(new["ln"]["scale"], 1.0)
    np.testing.assert_array_equal(new["final_norm"]["kernel"], 1.0)


def test_loss_is_mean_over_answer_tokens_of_whole_batch():
    model = decoder.Decoder(CFG)
    init = jax.jit(lambda r: nn.unbox(model.init(r, jnp.zeros((1, 8), jnp.int32)))["params"])
    params = init(jax.random.key(0))
    batch = packed_batch(1)
    apply = jax.jit(
        lambda p, b: model.apply({"params": p}, b[ts.INPUTS], b[ts.POSITIONS], b[ts.SEGMENT_IDS])
    )
    logits = np.asarray(apply(params, batch), np.float64)
    # Reference: log-softmax in float64, summed over answer tokens / their count.
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch[ts.TARGETS][..., None], -1)[..., 0]
    w = batch[ts.WEIGHTS]
    expected = (nll * w).sum() / w.sum()

    # Plain and chunked cross-entropy (final hidden states, 4 chunks of 8) agree, and so
    # do their gradients.
    def mean_loss(config):
        def f(p, b):
            total, aux = ts.loss_sums(p, b, model, config)
            return total / aux["weight_sum"]

        return f

    results = [
        jax.jit(jax.value_and_grad(mean_loss(ts.StepConfig(loss_chunk_size=c))))(params, batch)
        for c in (0, 8)
    ]
    for loss, _ in results:
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    grads = [g for _, g in results]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # A chunk that does not split the rows of 32 into several equal ones: never the whole
    # [B, L, V] logits in its place (check_shapes says so at set-up, in terms of the run).
    for chunk in (12, 32, 64):
        with pytest.raises(ValueError) as info:
            ts.loss_sums(params, batch, model, ts.StepConfig(loss_chunk_size=chunk))
        assert str(info.value) == (
            f"StepConfig.loss_chunk_size {chunk} does not split rows of 32 tokens into equal chunks"
        )
    # The evaluation step returns the sums behind that mean, whole or in micro-batches.
    correct = ((logits.argmax(-1) == batch[ts.TARGETS]) * w).sum()
    for config in (ts.StepConfig(), ts.StepConfig(num_microbatches=4, loss_chunk_size=8)):
        sums = jax.jit(ts.make_eval_step(model, config))(params, batch)
        assert set(sums) == set(ts.EVAL_SUMS)
        np.testing.assert_allclose(float(sums["loss_sum"]), (nll * w).sum(), rtol=1e-5)
        assert float(sums["weight_sum"]) == w.sum() and float(sums["correct_sum"]) == correct


def test_grad_accumulation_equals_one_big_batch():
    model = decoder.Decoder(CFG)
    # Plain SGD so parameter differences are gradient differences (Adam's
    # g / sqrt(v) would amplify rounding noise of near-zero gradients).
    tx = optax.sgd(0.5)
    mesh = one_device_mesh()
    batches = [packed_batch(2), packed_batch(3)]  # 8 rows: 4 micro-batches of 2
    full, full_losses = run_steps(model, tx, mesh, batches)
    acc, acc_losses = run_steps(model, tx, mesh, batches, ts.StepConfig(num_microbatches=4))
    np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(acc.step) == 2


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_losses_equal_one_device(shape, reference_losses):
    model = decoder.Decoder(CFG)
    mesh = P.make_mesh(P.MeshConfig(shape))
    state, losses = run_steps(model, _tx(), mesh, _batches(), params=_host_init())
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    # Parameters really are laid out by the rules table.
    qkv = state.params["layers"]["attn"]["qkv_kernel"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None, None)


def _tx():
    return ts.make_optimizer(ts.OptimizerConfig(learning_rate=3e-3, warmup_steps=1), 10)


def _batches():
    # The first batch comes back at step 3, where its loss must have fallen.
    return [packed_batch(10), packed_batch(11), packed_batch(10)]


@functools.cache
def _host_init():
    """One random initialisation as numpy, placed onto each mesh by init_state."""
    _, state = make_state(decoder.Decoder(CFG), _tx(), one_device_mesh())
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def reference_losses():
    model = decoder.Decoder(CFG)
    _, losses = run_steps(model, _tx(), one_device_mesh(), _batches(), params=_host_init())
    assert all(math.isfinite(x) for x in losses)
    assert losses[2] < losses[0]  # training moves
    return losses


def test_mixed_precision_close_to_float32(reference_losses):
    model = decoder.Decoder(dataclasses.replace(CFG, dtype="bfloat16"))
    state, losses = run_steps(model, _tx(), one_device_mesh(), _batches(), params=_host_init())
    # Measured: within 7e-6 relative over three steps (float32 params, bf16 compute).
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
    # ... but not equal: float32 compute would repeat the reference bit for bit (a dtype
    # setting ignored would pass the bound above).
    assert np.abs(np.subtract(losses, reference_losses)).max() > 0
    # Parameters and optimizer moments stay float32.
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype("float32")}
