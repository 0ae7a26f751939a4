"""Decoding vs transformers' generate: greedy token for token, beam search (4 beams) by
sequence and by transformers' own score, sampling warpers, seeds, sharding."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from hf_reference import make_hf_model

from ecomgpt_jax import decoding
from ecomgpt_jax import partitioning as P
from ecomgpt_jax.decoding import DecodeConfig, DecodeConfigError
from ecomgpt_jax.models import hf_io

KINDS = ["tiny-bloom", "tiny-qwen2"]
NUM_PROMPTS = 32
# One bucket (prompts of 3..20 tokens fit 32): one compilation per model and setting.
COMMON = dict(max_prompt_len=32, min_bucket=32)
GREEDY = DecodeConfig(method="greedy", max_new_tokens=10, **COMMON)
BEAM = DecodeConfig(method="beam", num_beams=4, max_new_tokens=8, **COMMON)
# A random model rarely says EOS; scaling the (tied) EOS embedding makes some rows stop
# early and others run to max_new_tokens, so both endings are exercised.
EOS_BOOST = {"tiny-bloom": 12.0, "tiny-qwen2": 11.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """preset -> (hf model, cfg, params) with params imported from save_pretrained."""
    out = {}
    for preset in KINDS:
        hf_model = make_hf_model(preset, eos_boost=EOS_BOOST[preset])
        path = tmp_path_factory.mktemp(preset)
        hf_model.save_pretrained(path)
        cfg, params = hf_io.load_hf_params(path)
        out[preset] = (hf_model, cfg, params)
    return out


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    return [[int(t) for t in rng.randint(3, 1024, rng.randint(3, 21))] for _ in range(NUM_PROMPTS)]


def run_ours(cfg, params, dcfg, prompts, mesh=None, batch_size=NUM_PROMPTS, row_ids=None):
    gen = decoding.Generator(cfg, dcfg, eos_id=cfg.eos_id, pad_id=cfg.pad_id, mesh=mesh)
    return gen.generate(gen.shard_params(params), prompts, batch_size, row_ids=row_ids)


def run_hf(model, cfg, prompts, **kwargs):
    """transformers generate on the left-padded batch -> (continuations, output)."""
    length = max(map(len, prompts))
    ids, mask = decoding.left_pad(prompts, length, cfg.pad_id)
    with torch.no_grad():
        out = model.generate(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            eos_token_id=cfg.eos_id,
            pad_token_id=cfg.pad_id,
            return_dict_in_generate=True,
            output_scores=True,
            **kwargs,
        )
    conts = []
    for row in out.sequences[:, length:].tolist():
        conts.append(tuple(row[: row.index(cfg.eos_id)] if cfg.eos_id in row else row))
    return conts, out


def hf_sequence_score(model, cfg, prompt, cont, max_new, length_penalty=1.0):
    """transformers' beam score of a finished hypothesis: sum of log-probs of the generated
    tokens (EOS included when it stopped there) / generated_len ** length_penalty."""
    gen = list(cont) + ([cfg.eos_id] if len(cont) < max_new else [])
    ids = torch.tensor([list(prompt) + gen])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    start = len(prompt)
    total = sum(float(logprobs[start - 1 + i, t]) for i, t in enumerate(gen))
    return total / len(gen) ** length_penalty


@pytest.mark.parametrize("preset", KINDS)
def test_greedy_matches_transformers_token_for_token(models, prompts, preset):
    hf_model, cfg, params = models[preset]
    ours = run_ours(cfg, params, GREEDY, prompts)
    ref, _ = run_hf(hf_model, cfg, prompts, do_sample=False, max_new_tokens=10)
    assert [r.tokens for r in ours] == ref
    lengths = [len(r) for r in ref]
    assert any(n < 10 for n in lengths) and any(n == 10 for n in lengths)  # both endings
    # The score: the chosen tokens' log-probabilities summed, EOS included, none after it.
    expected = [
        hf_sequence_score(hf_model, cfg, p, r, 10, length_penalty=0.0)
        for p, r in zip(prompts, ref, strict=True)
    ]
    np.testing.assert_allclose([r.score for r in ours], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("preset", KINDS)
def test_beam_search_matches_transformers(models, prompts, preset):
    hf_model, cfg, params = models[preset]
    ours = run_ours(cfg, params, BEAM, prompts)
    ref, out = run_hf(hf_model, cfg, prompts, do_sample=False, num_beams=4, max_new_tokens=8)
    for i, (o, r) in enumerate(zip(ours, ref, strict=True)):
        if o.tokens == r:
            # Same hypothesis: same score as transformers reports.
            assert o.score == pytest.approx(float(out.sequences_scores[i]), abs=1e-4)
        else:
            # Another hypothesis only at a tie (float32 sums in another order may break it
            # the other way), never a better or worse one: a search that stops later or
            # sooner than transformers' finds a different score.
            mine = hf_sequence_score(hf_model, cfg, prompts[i], o.tokens, 8)
            theirs = hf_sequence_score(hf_model, cfg, prompts[i], r, 8)
            assert mine == pytest.approx(theirs, abs=1e-4), (i, o.tokens, r, mine, theirs)
    assert len({len(r) for r in ref}) > 1  # some hypotheses end with EOS, some at the limit


@pytest.mark.parametrize(
    "length_penalty, early_stopping", [(2.0, True), (0.5, "never"), (-1.0, False)]
)
def test_beam_search_length_penalty_and_early_stopping(
    models, prompts, length_penalty, early_stopping
):
    hf_model, cfg, params = models["tiny-qwen2"]
    dcfg = dataclasses.replace(
        BEAM,
        num_beams=3,
        max_new_tokens=9,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    ours = run_ours(cfg, params, dcfg, prompts)
    ref, out = run_hf(
        hf_model,
        cfg,
        prompts,
        do_sample=False,
        num_beams=3,
        max_new_tokens=9,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    # Every hypothesis and its score as transformers' (these prompts have no near tie).
    assert [o.tokens for o in ours] == ref
    np.testing.assert_allclose([o.score for o in ours], out.sequences_scores, atol=1e-4)


def test_beam_search_sharded_equals_unsharded(models, prompts):
    """Batch over (data, fsdp), params over fsdp and tensor: the same hypotheses."""
    _, cfg, params = models["tiny-qwen2"]
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))
    sharded = run_ours(cfg, params, BEAM, prompts[:12], mesh=mesh, batch_size=8)
    single = run_ours(cfg, params, BEAM, prompts[:12], batch_size=8)
    assert [r.tokens for r in sharded] == [r.tokens for r in single]
    np.testing.assert_allclose([r.score for r in sharded], [r.score for r in single], atol=1e-4)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(models, prompts):
    _, cfg, params = models["tiny-qwen2"]
    sample = DecodeConfig(method="sample", temperature=1.5, max_new_tokens=10, seed=3, **COMMON)
    first = run_ours(cfg, params, sample, prompts)
    # Each row has its own stream: other batch sizes / orders give the same samples.
    again = run_ours(cfg, params, sample, prompts[::-1], batch_size=8, row_ids=range(31, -1, -1))
    assert [r.tokens for r in first] == [r.tokens for r in again[::-1]]
    other = run_ours(cfg, params, dataclasses.replace(sample, seed=4), prompts)
    assert [r.tokens for r in first] != [r.tokens for r in other]
    greedy = run_ours(cfg, params, GREEDY, prompts)
    assert [r.tokens for r in first] != [r.tokens for r in greedy]
    top1 = run_ours(cfg, params, dataclasses.replace(sample, top_k=1), prompts)
    assert [r.tokens for r in top1] == [r.tokens for r in greedy]
    # Fresh randomness every step: at a huge temperature the distribution is ~uniform
    # over the vocabulary, so a key reused across steps would repeat one token per row.
    hot = run_ours(cfg, params, dataclasses.replace(sample, temperature=1e4), prompts)
    distinct = [len(set(r.tokens)) / len(r.tokens) for r in hot if len(r.tokens) > 1]
    assert len(distinct) > len(hot) // 2 and np.mean(distinct) > 0.8, distinct


@pytest.mark.parametrize(
    "settings", [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(top_k=40, top_p=0.3)]
)
def test_warpers_match_transformers(settings):
    logits = np.random.RandomState(1).randn(4, 50).astype(np.float32) * 3
    dcfg = DecodeConfig(method="sample", **settings)
    ours = np.asarray(decoding.warp_logits(jax.numpy.asarray(logits), dcfg))
    # transformers' order (GenerationMixin._get_logits_processor): temperature, top-k, top-p.
    ref = torch.tensor(logits)
    if "temperature" in settings:
        ref = transformers.TemperatureLogitsWarper(settings["temperature"])(None, ref)
    if "top_k" in settings:
        ref = transformers.TopKLogitsWarper(settings["top_k"])(None, ref)
    if "top_p" in settings:
        ref = transformers.TopPLogitsWarper(settings["top_p"])(None, ref)
    ref = ref.numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


def test_prompt_buckets_and_left_padding():
    assert decoding.bucket_lengths(800, 64) == (64, 128, 256, 512, 800)
    assert decoding.bucket_lengths(32, 32) == (32,)
    assert decoding.bucket_for(65, (64, 128)) == 128
    tokens, mask = decoding.left_pad([[5, 6], [7]], 4, pad_id=0)
    np.testing.assert_array_equal(tokens, [[0, 0, 5, 6], [0, 0, 0, 7]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1]])


def test_long_prompt_keeps_its_last_tokens(models, prompts):
    _, cfg, params = models["tiny-qwen2"]
    dcfg = dataclasses.replace(GREEDY, max_prompt_len=6, min_bucket=8)
    long_prompts = [p for p in prompts if len(p) > 6][:4]
    cut = run_ours(cfg, params, dcfg, long_prompts, batch_size=4)
    ref = run_ours(cfg, params, dcfg, [p[-6:] for p in long_prompts], batch_size=4)
    assert [r.tokens for r in cut] == [r.tokens for r in ref]


@pytest.mark.parametrize(
    "bad",
    [
        dict(method="nucleus"),
        dict(num_beams=0),
        dict(temperature=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(max_new_tokens=0),
        dict(early_stopping="sometimes"),
        # Wrong types (gin passes what the user wrote): each reached jit before and failed
        # there with a JAX TypeError, after the model had loaded.
        dict(max_new_tokens=8.0),
        dict(max_new_tokens="8"),
        dict(max_new_tokens=None),
        dict(num_beams=2.5),
        dict(num_beams="4"),
        dict(max_prompt_len="32"),
        dict(top_k=2.5),
        dict(length_penalty="1"),
        dict(temperature=True),
        dict(early_stopping=1),
        dict(seed=2**31),
    ],
)
def test_bad_settings_name_the_field(bad):
    with pytest.raises(DecodeConfigError, match=f"DecodeConfig.{next(iter(bad))}="):
        DecodeConfig(**bad)
