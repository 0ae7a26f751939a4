"""ModelConfig, presets and the HF config.json mapping."""

import dataclasses

import numpy as np
import pytest

from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models.config import ConfigError, ModelConfig, RopeScaling

# Published config.json values (HF hub) for spot checks.
PUBLISHED = {
    "bloomz-7b1": dict(hidden=4096, layers=30, heads=32, vocab_size=250880, eos_id=2, pad_id=3),
    "bloomz-3b": dict(hidden=2560, layers=30, heads=32),
    "bloom-560m": dict(hidden=1024, layers=24, heads=16, norm_eps=1e-5),
    "qwen2.5-0.5b": dict(hidden=896, heads=14, kv_heads=2, mlp_dim=4864, tie_embeddings=True),
    "qwen2.5-7b": dict(hidden=3584, heads=28, kv_heads=4, vocab_size=152064, mlp_dim=18944),
    "llama-3-8b": dict(kv_heads=8, mlp_dim=14336, rope_theta=500000.0, vocab_size=128256),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_published_values(name):
    cfg = mc.get_preset(name)
    for field, value in PUBLISHED[name].items():
        assert getattr(cfg, field) == value, field


def test_unknown_preset_names_known_ones():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt-5'.*bloomz-7b1"):
        mc.get_preset("gpt-5")


def test_tiny_bloom_has_non_power_of_two_heads():
    heads = mc.get_preset("tiny-bloom").heads
    assert heads & (heads - 1) != 0


@pytest.mark.parametrize("name", sorted(mc.PRESETS))
def test_hf_config_round_trip(name):
    cfg = mc.get_preset(name)
    back = mc.from_hf_config(mc.to_hf_config(cfg))
    # config.json carries the architecture; presets may also pick runtime settings.
    assert back == dataclasses.replace(cfg, **{f: getattr(back, f) for f in mc.RUNTIME_FIELDS})
    assert all(getattr(back, f) == getattr(ModelConfig, f) for f in mc.RUNTIME_FIELDS)


@pytest.mark.parametrize("name", sorted(mc.PRESETS))
def test_json_round_trip(name):
    cfg = dataclasses.replace(mc.get_preset(name), dtype="bfloat16", remat_policy="full")
    assert ModelConfig.from_json_dict(cfg.to_json_dict()) == cfg


def test_rope_parameters_new_and_legacy_spelling_agree():
    base = dict(
        model_type="llama",
        vocab_size=32,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )
    scaling = dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    legacy = mc.from_hf_config({**base, "rope_theta": 5e5, "rope_scaling": scaling})
    new = mc.from_hf_config({**base, "rope_parameters": {**scaling, "rope_theta": 5e5}})
    assert legacy == new
    assert new.rope_theta == 5e5
    assert new.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_unsupported_architecture_names_what_was_found():
    with pytest.raises(ConfigError, match="model_type='gpt2'.*GPT2LMHeadModel"):
        mc.from_hf_config({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


def test_unsupported_features_rejected():
    base = dict(
        vocab_size=32,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
    )
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        mc.from_hf_config({**base, "model_type": "llama", "rope_scaling": {"rope_type": "yarn"}})
    with pytest.raises(ConfigError, match="use_sliding_window"):
        mc.from_hf_config({**base, "model_type": "qwen2", "use_sliding_window": True})
    with pytest.raises(ConfigError, match="hidden_act='gelu'"):
        mc.from_hf_config({**base, "model_type": "llama", "hidden_act": "gelu"})


def test_invalid_overrides_raise_naming_the_field():
    cfg = mc.get_preset("tiny-llama")
    with pytest.raises(ConfigError, match="ModelConfig.kv_heads=3"):
        dataclasses.replace(cfg, kv_heads=3)
    with pytest.raises(ConfigError, match="ModelConfig.dtype='fp8'"):
        dataclasses.replace(cfg, dtype="fp8")
    with pytest.raises(ConfigError, match="remat_policy"):
        dataclasses.replace(cfg, remat_policy="sometimes")
    # Sizes from gin or JSON overrides: a string, float or bool is a typo, not a size.
    for bad in ("a", 2.0, True, 0):
        with pytest.raises(ConfigError, match=rf"^ModelConfig.layers={bad!r}: must be a positive"):
            dataclasses.replace(cfg, layers=bad)
    assert dataclasses.replace(cfg, vocab_size=4096).vocab_size == 4096
    assert dataclasses.replace(cfg, vocab_size=np.int64(4096)).vocab_size == 4096


def test_rope_scaling_dict_is_frozen_into_dataclass():
    cfg = dataclasses.replace(
        mc.get_preset("tiny-llama"), rope_scaling={"factor": 2.0, "original_max_positions": 32}
    )
    assert cfg.rope_scaling == RopeScaling(factor=2.0, original_max_positions=32)
    hash(cfg)  # still hashable (usable as a static jit argument)


def test_hf_model_type():
    assert mc.get_preset("tiny-bloom").hf_model_type == "bloom"
    assert mc.get_preset("tiny-qwen2").hf_model_type == "qwen2"
    assert mc.get_preset("llama-3-8b").hf_model_type == "llama"


def test_config_module_does_not_import_jax_or_gin():
    import pathlib
    import subprocess
    import sys

    code = (
        "import sys; import ecomgpt_jax.models.config; "
        "bad = {'jax', 'gin', 'tensorflow', 'seqio'} & set(sys.modules); print(sorted(bad))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
