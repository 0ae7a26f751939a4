"""ModelConfig, presets (gin_configs/models/*.gin) and the HF config.json mapping."""

import dataclasses
import json

import gin
import numpy as np
import processes
import pytest

from ecomgpt_jax import launch
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
    with pytest.raises(ConfigError, match="unknown model preset 'gpt-5'.*'bloomz_7b1'"):
        mc.get_preset("gpt-5")


def test_preset_names_are_the_model_files():
    assert mc.preset_names() == [
        "bench_bloom_cpu",
        "bloom_560m",
        "bloomz_1b1",
        "bloomz_1b7",
        "bloomz_3b",
        "bloomz_560m",
        "bloomz_7b1",
        "llama_3_8b",
        "qwen2_5_0_5b",
        "qwen2_5_1_5b",
        "qwen2_5_7b",
        "tiny_bloom",
        "tiny_llama",
        "tiny_qwen2",
    ]
    # Hub-style spellings name the same file.
    assert mc.get_preset("qwen2.5-0.5b") == mc.read_model_file(mc.MODELS_DIR / "qwen2_5_0_5b.gin")
    assert mc.get_preset("bloomz-7b1") == mc.read_model_file(mc.MODELS_DIR / "bloomz_7b1.gin")


@pytest.fixture
def gin_model_config():
    """gin's ModelConfig configurable, on a clean gin config (cleared again afterwards)."""
    configurable = launch.register_configurables({"ModelConfig": (ModelConfig, "models")})
    gin.clear_config()
    yield configurable["ModelConfig"]
    gin.clear_config()


@pytest.mark.parametrize("name", mc.preset_names())
def test_gin_reads_each_model_file_as_get_preset_does(gin_model_config, name):
    gin.parse_config_file(str(mc.MODELS_DIR / f"{name}.gin"))
    assert gin_model_config() == mc.get_preset(name)


def test_the_last_model_file_included_replaces_all_of_an_earlier_one(gin_model_config):
    # tiny_llama binds rope_scaling, untied embeddings and the llama family; tiny_bloom
    # must replace each of them, not inherit them.
    gin.parse_config_file(str(mc.MODELS_DIR / "tiny_llama.gin"))
    gin.parse_config_file(str(mc.MODELS_DIR / "tiny_bloom.gin"))
    assert gin_model_config() == mc.get_preset("tiny_bloom")


def _model_file(tmp_path, *changes, drop=()):
    lines = (mc.MODELS_DIR / "tiny_bloom.gin").read_text().splitlines()
    lines = [ln for ln in lines if not any(ln.startswith(f"ModelConfig.{f} ") for f in drop)]
    path = tmp_path / "m.gin"
    path.write_text("\n".join([*lines, *changes]) + "\n", encoding="utf-8")
    return path


def test_read_model_file_applies_later_bindings_and_ignores_macros(tmp_path):
    path = _model_file(
        tmp_path,
        "# a form feed \x0c and a line separator \u2028 inside a comment end no line",
        "ModelConfig.hidden = 48  # é",
        "ModelConfig.head_dim = 8",
        "ModelConfig.mlp_dim = 192",
        "X = {'é': (3, -4.5, {'a': [None, True]})}  # the tuple's offset is in UTF-8 bytes",
        "Y = ((1, 2), (3, 4))",
        "ModelConfig.rope_scaling = {",
        "    'factor': 2.0,",
        "}",
    )
    want = dataclasses.replace(
        mc.get_preset("tiny_bloom"),
        hidden=48,
        head_dim=8,
        mlp_dim=192,
        rope_scaling=RopeScaling(factor=2.0),
    )
    assert mc.read_model_file(path) == want


@pytest.mark.parametrize(
    "extra, drop, message",
    [
        ("include 'models/tiny_llama.gin'", (), r"m.gin:\d+: not a model file \(invalid syntax"),
        ("ModelConfig.hidden = %HIDDEN", (), r"m.gin:\d+: not a model file"),
        ("TrainConfig.seed = 1", (), r"m.gin:\d+: a model file holds `ModelConfig.<field> = "),
        ("ModelConfig.hidden = 2 * 48", (), r"m.gin:\d+: ModelConfig.hidden: the value must be a "),
        ("ModelConfig.widht = 96", (), r"m.gin: model config has unknown fields \['widht'\]"),
        ("ModelConfig.heads = 4", (), r"m.gin: ModelConfig.kv_heads=6: must divide heads=4"),
        ("", ("pad_id", "dtype"), r"m.gin: binds no value for ModelConfig fields \['dtype', 'pad"),
        (
            "ModelConfig.rope_scaling = {'factr': 2.0}",
            (),
            r"m.gin: ModelConfig.rope_scaling={'factr': 2.0}: keys must be among \['factor', ",
        ),
        # Python that gin does not take.
        ("ModelConfig.max_positions = 512,", (), r"m.gin:\d+: ModelConfig.max_positions: the v"),
        ("ModelConfig.norm_eps = +1e-6", (), r"m.gin:\d+: ModelConfig.norm_eps: the value must"),
        ("ModelConfig.norm_eps = 1e-5+0j", (), r"m.gin:\d+: ModelConfig.norm_eps: the value must"),
        ("ModelConfig.rope_scaling = {1, 2}", (), r"m.gin:\d+: ModelConfig.rope_scaling: the va"),
        ("ModelConfig.rope_scaling = {[1]: 2}", (), r"m.gin:\d+: ModelConfig.rope_scaling: the va"),
        ("ModelConfig.hidden = ModelConfig.layers = 2", (), r"m.gin:\d+: a model file holds `Mod"),
        ("ModelConfig.layers = 2; ModelConfig.hidden = 48", (), r"m.gin:\d+: a model file holds"),
        ("X = foo()", (), r"m.gin:\d+: X: the value must be a literal"),
        ("X = (1), 2", (), r"m.gin:\d+: X: the value must be a literal"),
        ("X = (1, 2), (3, 4)", (), r"m.gin:\d+: X: the value must be a literal"),
        ("X = -(1)", (), r"m.gin:\d+: X: the value must be a literal"),
        ("X = 1;", (), r"m.gin:\d+: a model file holds .* bindings only, one per line"),
    ],
)
def test_read_model_file_errors_name_the_file_and_line(tmp_path, extra, drop, message):
    path = _model_file(tmp_path, extra, drop=drop)
    with pytest.raises(ConfigError, match=message):
        mc.read_model_file(path)


def test_read_model_file_line_numbers_are_the_files(tmp_path):
    path = _model_file(tmp_path, "TrainConfig.seed = 1")
    line = len(path.read_text().splitlines())
    with pytest.raises(ConfigError, match=f"m.gin:{line}: "):
        mc.read_model_file(path)


def test_tiny_bloom_has_non_power_of_two_heads():
    heads = mc.get_preset("tiny-bloom").heads
    assert heads & (heads - 1) != 0


@pytest.mark.parametrize("name", mc.preset_names())
def test_hf_config_round_trip(name):
    cfg = mc.get_preset(name)
    back = mc.from_hf_config(mc.to_hf_config(cfg))
    # config.json carries the architecture; presets may also pick runtime settings.
    assert back == dataclasses.replace(cfg, **{f: getattr(back, f) for f in mc.RUNTIME_FIELDS})
    assert all(getattr(back, f) == getattr(ModelConfig, f) for f in mc.RUNTIME_FIELDS)


@pytest.mark.parametrize("name", mc.preset_names())
def test_json_round_trip(name):
    cfg = dataclasses.replace(mc.get_preset(name), dtype="bfloat16", remat_policy="full")
    assert ModelConfig.from_json_dict(cfg.to_json_dict()) == cfg


def test_a_list_of_eos_ids_survives_the_round_trip():
    """Llama 3.1 Instruct's config.json lists three EOS ids: the first is the model's
    eos_id, the others are kept for the export (they were dropped, and an exported model
    no longer stopped at <|eot_id|>); JSON and gin lists become a tuple."""
    hf = dict(SMALL_HF_CONFIG, model_type="llama", eos_token_id=[7, 9, 11], bos_token_id=5)
    cfg = mc.from_hf_config(hf)
    assert (cfg.eos_id, cfg.extra_eos_ids, cfg.bos_id) == (7, (9, 11), 5)
    assert mc.to_hf_config(cfg)["eos_token_id"] == [7, 9, 11]
    assert mc.to_hf_config(dataclasses.replace(cfg, extra_eos_ids=()))["eos_token_id"] == 7
    assert ModelConfig.from_json_dict(json.loads(json.dumps(cfg.to_json_dict()))) == cfg
    with pytest.raises(mc.ConfigError, match=r"extra_eos_ids=\('9',\): must be a tuple of"):
        dataclasses.replace(cfg, extra_eos_ids=("9",))


# The config.json keys every small Llama/Qwen2 mapping test starts from.
SMALL_HF_CONFIG = dict(
    vocab_size=32,
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=128,
)


def test_rope_parameters_new_and_legacy_spelling_agree():
    base = dict(SMALL_HF_CONFIG, model_type="llama", num_key_value_heads=2)
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


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_keys_left_out_of_config_json_take_transformers_defaults(model_type):
    """A config.json may omit tie_word_embeddings and num_key_value_heads: we must read
    what transformers reads (an untied head taken as tied would be silently dropped)."""
    import transformers

    base = dict(SMALL_HF_CONFIG)
    if model_type == "qwen2":
        base["num_attention_heads"] = 64  # Qwen2Config's default of 32 kv heads divides it
        base["hidden_size"] = 1024
    hf_class = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}
    ref = hf_class[model_type](**base)
    ours = mc.from_hf_config({**base, "model_type": model_type})
    assert ours.tie_embeddings is ref.tie_word_embeddings is False
    assert ours.kv_heads == ref.num_key_value_heads == {"qwen2": 32, "llama": 4}[model_type]
    maxpos = {"qwen2": 32768, "llama": 2048}[model_type]
    assert ours.max_positions == ref.max_position_embeddings == maxpos


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}
LEFT_OUT = object()  # a key config.json does not have


@pytest.mark.parametrize(
    "model_type, changes, message",
    [
        ("qwen2", {"vocab_size": LEFT_OUT}, "vocab_size is missing or null"),
        ("qwen2", {"num_attention_heads": None}, "num_attention_heads is missing or null"),
        ("llama", {"hidden_size": "64"}, "hidden_size='64': must be a positive integer"),
        ("llama", {"intermediate_size": 1.5}, "intermediate_size=1.5: must be a positive integer"),
        ("llama", {"rms_norm_eps": "1e-5"}, "rms_norm_eps='1e-5': must be a number"),
        (
            "llama",
            {"rope_scaling": LLAMA3_ROPE},
            "rope_scaling.low_freq_factor is missing or null",
        ),
        (
            "llama",
            {"rope_parameters": {**LLAMA3_ROPE, "low_freq_factor": 1.0}},
            "rope_parameters.original_max_position_embeddings is missing or null",
        ),
        ("bloom", {"n_head": 0}, "n_head=0: must be a positive integer"),
        (
            "bloom",
            {"tie_word_embeddings": False},
            "tie_word_embeddings=false: a BLOOM with an untied LM head is not supported",
        ),
    ],
)
def test_a_missing_or_bad_config_json_field_is_named(model_type, changes, message):
    """Not a KeyError, TypeError or ZeroDivisionError from deep in the mapping."""
    hf = {**SMALL_HF_CONFIG, "model_type": model_type, **changes}
    hf = {k: v for k, v in hf.items() if v is not LEFT_OUT}
    with pytest.raises(ConfigError) as info:
        mc.from_hf_config(hf)
    where = f"config.json (model_type={model_type!r}, architectures=None)"
    assert str(info.value) == f"{where}: {message}"


def test_unsupported_architecture_names_what_was_found():
    with pytest.raises(ConfigError, match="model_type='gpt2'.*GPT2LMHeadModel"):
        mc.from_hf_config({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


def test_unsupported_features_rejected():
    base = dict(SMALL_HF_CONFIG)
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
    with pytest.raises(ConfigError, match=r"^ModelConfig.logits_dtype='bf16': must be one of"):
        dataclasses.replace(cfg, logits_dtype="bf16")
    with pytest.raises(ConfigError, match=r"^ModelConfig.logits_dtype='float16': must be one"):
        dataclasses.replace(cfg, logits_dtype="float16")
    with pytest.raises(ConfigError, match="remat_policy"):
        dataclasses.replace(cfg, remat_policy="sometimes")
    # HF's BloomConfig has no MLP width: any other loads and trains, but cannot export.
    narrow = dataclasses.replace(mc.get_preset("tiny-bloom"), mlp_dim=200)
    with pytest.raises(ConfigError) as info:
        mc.to_hf_config(narrow)
    assert str(info.value) == (
        "ModelConfig.mlp_dim=200: a BLOOM export needs 4 * hidden (384); HF's BloomConfig "
        "cannot say otherwise"
    )
    # Sizes from gin or JSON overrides: a string, float or bool is a typo, not a size.
    for bad in ("a", 2.0, True, 0):
        with pytest.raises(ConfigError, match=rf"^ModelConfig.layers={bad!r}: must be a positive"):
            dataclasses.replace(cfg, layers=bad)
    # Switches, numbers and ids from gin or JSON as typed: 'False' is a true string, and
    # it reached model_config.json and the HF export ("tie_word_embeddings": "False").
    for field, value, why in [
        ("tie_embeddings", "False", "must be True or False"),
        ("scan_layers", 1, "must be True or False"),
        ("qkv_bias", "no", "must be True or False"),
        ("norm_eps", "1e-5", "must be a positive number"),
        ("rope_theta", 0, "must be a positive number"),
        ("max_positions", 2048.0, "must be a positive integer"),
        ("eos_id", "1", "must be a token id (an integer) or None"),
        ("pad_id", True, "must be a token id (an integer) or None"),
    ]:
        with pytest.raises(ConfigError) as info:
            dataclasses.replace(cfg, **{field: value})
        assert str(info.value) == f"ModelConfig.{field}={value!r}: {why}"
    assert dataclasses.replace(cfg, pad_id=-1).pad_id == -1  # old Llama configs say so
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
    statement = "import ecomgpt_jax.models.config"
    assert processes.loaded_by(statement, {"jax", "gin", "tensorflow", "seqio"}) == []
