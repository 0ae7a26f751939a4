"""Tests for ecomgpt_jax/models/hf_io.py: safetensors <-> params against transformers.

(The CLI that wraps it, and the round trips through orbax, are in test_convert.py.)
"""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from hf_reference import make_hf_model

from ecomgpt_jax.models import decoder, hf_io

TOL = 1e-4
IDS = np.random.RandomState(0).randint(0, 1024, (2, 20))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def test_sharded_export_and_bfloat16(tmp_path):
    hf_model = make_hf_model("tiny-llama")
    hf_model.save_pretrained(tmp_path / "hf")
    cfg, params = hf_io.load_hf_params(tmp_path / "hf", dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16" and cfg.dtype == "bfloat16"
    assert params["layers"]["attn"]["q_kernel"].dtype == ml_dtypes.bfloat16
    hf_io.save_hf(cfg, params, tmp_path / "sharded", max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["torch_dtype"] == (
        "bfloat16"
    )
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "sharded", dtype=torch.float32
    ).eval()
    # Every tensor is torch's own bfloat16 rounding of the source's, bit for bit ...
    want = {k: v.to(torch.bfloat16).float() for k, v in hf_model.state_dict().items()}
    got = back.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    # ... so only that rounding separates the logits (measured: max 0.0029, std 0.16).
    assert np.abs(hf_logits(back, IDS) - hf_logits(hf_model, IDS)).max() < 0.01
    # Re-import of the sharded bf16 export gives the same bf16 params.
    _, again = hf_io.load_hf_params(tmp_path / "sharded")
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_bloom_without_transformer_prefix(tmp_path):
    """bigscience's own BLOOM files were saved from BloomModel: no `transformer.`."""
    from safetensors.numpy import save_file

    hf_model = make_hf_model("tiny-bloom")
    state = {
        k.removeprefix("transformer."): v.numpy()
        for k, v in hf_model.state_dict().items()
        if k != "lm_head.weight"
    }
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg, params = hf_io.load_hf_params(tmp_path)
    ours = np.asarray(decoder.Decoder(cfg).apply({"params": params}, jnp.asarray(IDS)))
    assert np.abs(ours - hf_logits(hf_model, IDS)).max() <= TOL


def test_missing_and_unexpected_tensors_are_reported(tmp_path):
    from safetensors.numpy import save_file

    hf_model = make_hf_model("tiny-qwen2")
    hf_model.config.to_json_file(tmp_path / "config.json")
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError, match=r"missing.*layers\.1\.mlp\.up_proj"):
        hf_io.load_hf_params(tmp_path)
    state["model.layers.1.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
    state["model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError, match="not part of a qwen2.*extra"):
        hf_io.load_hf_params(tmp_path)


def test_broken_json_and_damaged_safetensors_are_named(tmp_path):
    """Each unreadable file gives one line naming it (and the JSON line), not a trace."""
    make_hf_model("tiny-qwen2").save_pretrained(tmp_path)
    config, weights = tmp_path / "config.json", tmp_path / "model.safetensors"
    good_config, good_weights = config.read_text(), weights.read_bytes()

    def error():
        with pytest.raises(hf_io.CheckpointFormatError) as e:
            hf_io.load_hf_params(tmp_path)
        return str(e.value)

    config.write_text('{\n  "model_type": ,\n}')
    assert error() == f"{config}:2: not valid JSON (Expecting value, column 17)"
    config.write_text("[1, 2]")
    assert error() == f"{config}: expected a JSON object, got list"
    config.write_text(good_config)
    weights.write_bytes(good_weights[:5000])  # an interrupted download
    assert error() == (
        f"{weights}: damaged safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered)"
    )
    weights.write_bytes(good_weights)
    index = tmp_path / hf_io.INDEX_FILE
    index.write_text('{"weight_map": ')
    assert error() == f"{index}:1: not valid JSON (Expecting value, column 16)"
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002.safetensors"}}))
    assert error() == f"{index}: lists model-00002.safetensors, which is not in {tmp_path}"
    index.write_text(json.dumps({"metadata": {}}))
    assert error() == f"{index}: no 'weight_map' object of file names"


def _saved(path, preset):
    make_hf_model(preset).save_pretrained(path)
    return path


def test_an_export_never_mixes_with_another(tmp_path):
    """save_hf refuses a folder that holds a model; a shard index beside weights it does not
    list (transformers would load the single file) is refused on import."""
    cfg, params = hf_io.load_hf_params(_saved(tmp_path / "hf", "tiny-llama"))
    sharded = hf_io.save_hf(cfg, params, tmp_path / "sharded", max_shard_bytes=64 * 1024)
    before = sorted(p.name for p in sharded.iterdir())
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.save_hf(cfg, params, sharded)
    assert str(e.value) == (
        f"{sharded} already holds a model ({', '.join(before)}); choose an empty folder"
    )
    assert sorted(p.name for p in sharded.iterdir()) == before

    shutil.copy(tmp_path / "hf" / "model.safetensors", sharded / "model.safetensors")
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.load_hf_params(sharded)
    assert str(e.value) == (
        f"{sharded}: model.safetensors.index.json does not list model.safetensors: two exports "
        "are mixed here; remove the stale files"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.save_hf(cfg, params, tmp_path / "file")
    assert str(e.value) == f"{tmp_path / 'file'} is a file, not a folder"
    # An empty existing folder takes the export.
    (tmp_path / "empty").mkdir()
    hf_io.save_hf(cfg, params, tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_a_tied_config_beside_a_different_head_is_refused(tmp_path):
    """config.json says tied (or leaves it out where that means tied, BLOOM) but the file
    holds a head of its own: dropping it would silently change the model."""
    from safetensors.numpy import save_file

    hf_model = make_hf_model("tiny-bloom")
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    embedding = state["transformer.word_embeddings.weight"]
    (tmp_path / "config.json").write_text(json.dumps(hf_model.config.to_dict()))
    # A head equal to the embedding (as some BLOOM files store it) is the tied head.
    save_file({**state, "lm_head.weight": embedding}, str(tmp_path / "model.safetensors"))
    cfg, params = hf_io.load_hf_params(tmp_path)
    np.testing.assert_array_equal(params["embed"]["embedding"], embedding)
    save_file({**state, "lm_head.weight": embedding + 1}, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.load_hf_params(tmp_path)
    differs = (
        f"{tmp_path / 'model.safetensors'}: lm_head.weight differs from the input embedding, "
        "but config.json ties them (tie_word_embeddings true or left out for this "
        "model_type): "
    )
    # Untying is no way out for a BLOOM (its head is always the embedding here).
    assert str(e.value) == differs + "a BLOOM with an untied LM head is not supported"
    hf_model = make_hf_model("tiny-qwen2")
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
    hf_model.config.to_json_file(tmp_path / "config.json")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.load_hf_params(tmp_path)
    assert str(e.value) == differs + "set tie_word_embeddings to false there"


def test_an_untied_bloom_is_refused_as_unsupported(tmp_path):
    """transformers saves a BLOOM with tie_word_embeddings false and a head of its own: our
    BLOOM has none, so it is refused as such (untying is not advice that helps)."""
    config = transformers.BloomConfig(
        vocab_size=128, hidden_size=32, n_layer=1, n_head=4, tie_word_embeddings=False
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(hf_io.ConfigError) as e:
        hf_io.load_hf_params(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'config.json'}: config.json (model_type='bloom', architectures="
        "['BloomForCausalLM']): tie_word_embeddings=false: a BLOOM with an untied LM head is "
        "not supported"
    )


def test_a_failed_export_leaves_nothing_that_blocks_a_retry(tmp_path):
    cfg, params = hf_io.load_hf_params(_saved(tmp_path / "hf", "tiny-llama"))
    down = params["layers"]["mlp"].pop("down_kernel")  # fails after the first shards
    with pytest.raises(KeyError, match="down_kernel"):
        hf_io.save_hf(cfg, params, tmp_path / "out", max_shard_bytes=16 * 1024)
    assert list((tmp_path / "out").iterdir()) == []
    params["layers"]["mlp"]["down_kernel"] = down
    hf_io.save_hf(cfg, params, tmp_path / "out", max_shard_bytes=16 * 1024)
    _, again = hf_io.load_hf_params(tmp_path / "out")
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_a_tensor_of_the_right_size_but_the_wrong_shape_is_refused(tmp_path):
    """A transposed [in, out] weight has the right size: read by size alone it loaded
    scrambled, where transformers refuses it."""
    from safetensors.numpy import save_file

    hf_model = make_hf_model("tiny-qwen2")
    hf_model.config.to_json_file(tmp_path / "config.json")
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    key = "model.layers.0.mlp.gate_proj.weight"
    out, inputs = state[key].shape
    state[key] = np.ascontiguousarray(state[key].T)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.load_hf_params(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'model.safetensors'}: {key}: has shape ({inputs}, {out}), config.json's "
        f"model needs ({out}, {inputs})"
    )


def test_without_an_index_only_model_safetensors_is_read_and_a_repeat_is_refused(tmp_path):
    """transformers reads model.safetensors alone when there is no index: a stale copy
    beside it is not read (it used to be, and the later file's values won). A tensor found
    twice among the files read (shards without an index) is refused, naming both."""
    from safetensors.numpy import save_file

    hf_model = make_hf_model("tiny-qwen2")
    hf_model.config.to_json_file(tmp_path / "config.json")
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    save_file({k: v + 1 for k, v in state.items()}, str(tmp_path / "model_v2.safetensors"))
    _, params = hf_io.load_hf_params(tmp_path)
    np.testing.assert_array_equal(params["final_norm"]["scale"], state["model.norm.weight"])

    (tmp_path / "model.safetensors").rename(tmp_path / "a.safetensors")
    norm = state["model.norm.weight"]
    save_file({"model.norm.weight": norm + 1}, str(tmp_path / "model_v2.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.load_hf_params(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'model_v2.safetensors'}: model.norm.weight: the same tensor is also in "
        "a.safetensors: model.norm.weight; two exports are mixed here: remove the stale files"
    )


def test_quantized_weights_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    hf_model = make_hf_model("tiny-llama")
    hf_model.config.to_json_file(tmp_path / "config.json")
    state = dict(hf_model.state_dict())
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.float8_e4m3fn)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(hf_io.CheckpointFormatError) as e:
        hf_io.load_hf_params(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'model.safetensors'}: model.norm.weight: stored as F8_E4M3; only F64, "
        "F32, F16, BF16 weights can be read (a quantized checkpoint? use the unquantized one)"
    )
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf_io.ConfigError, match=r"quantized checkpoint \(.*'fp8'\) is not supp"):
        hf_io.load_hf_params(tmp_path)
