"""HF <-> orbax conversion: CLI, exact round trips through transformers, refusals."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax import checkpointing, convert
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder, hf_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_reference import make_hf_model  # noqa: E402

TOL = 1e-4


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


IDS = np.random.RandomState(0).randint(0, 1024, (2, 20))


@pytest.mark.parametrize("preset", ["tiny-bloom", "tiny-qwen2", "tiny-llama"])
def test_cli_round_trip_reproduces_transformers_logits(tmp_path, preset):
    hf_model = make_hf_model(preset)
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    ref = hf_logits(hf_model, IDS)

    assert (
        convert.main(
            ["hf-to-orbax", "--hf_dir", str(tmp_path / "hf"), "--output", str(tmp_path / "ox")]
        )
        == 0
    )
    assert (tmp_path / "ox" / "params").is_dir()
    cfg = checkpointing.load_model_config(tmp_path / "ox")
    assert cfg.hf_model_type == mc.get_preset(preset).hf_model_type
    # The trainer's restore path reads the converted checkpoint.
    params = checkpointing.restore_params(tmp_path / "ox", decoder.abstract_params(cfg))
    ours = np.asarray(jax.jit(decoder.Decoder(cfg).apply)({"params": params}, jnp.asarray(IDS)))
    assert np.abs(ours - ref).max() <= TOL

    argv = ["orbax-to-hf", "--checkpoint", str(tmp_path / "ox"), "--output", str(tmp_path / "back")]
    assert convert.main([*argv, "--tokenizer_dir", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "back" / "tokenizer.json").read_text() == '{"fake": "tokenizer"}'
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back) is type(hf_model)
    assert np.abs(hf_logits(back, IDS) - ref).max() <= TOL
    # Same tensors, bit for bit (float32 all the way).
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), name)


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    make_hf_model("tiny-qwen2").config.to_json_file(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(hf_io.CheckpointFormatError, match="arbitrary code.*safe_serialization"):
        hf_io.load_hf_params(tmp_path)
    argv = ["hf-to-orbax", "--hf_dir", str(tmp_path), "--output", str(tmp_path / "o")]
    assert convert.main(argv) == 2
    assert "pytorch_model.bin" in capsys.readouterr().err


def test_unsupported_architecture_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(mc.ConfigError, match=r"config.json.*'gpt2'.*GPT2LMHeadModel"):
        hf_io.load_hf_params(tmp_path)
    argv = ["hf-to-orbax", "--hf_dir", str(tmp_path), "--output", str(tmp_path / "o")]
    assert convert.main(argv) == 2
    assert "GPT2LMHeadModel" in capsys.readouterr().err


def test_existing_output_and_missing_config(tmp_path):
    make_hf_model("tiny-llama").save_pretrained(tmp_path / "hf")
    (tmp_path / "out" / "params").mkdir(parents=True)
    with pytest.raises(hf_io.CheckpointFormatError, match="already exists"):
        convert.hf_to_orbax(tmp_path / "hf", tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "out")
    (tmp_path / "out" / "model_config.json").unlink()
    argv = ["orbax-to-hf", "--checkpoint", str(tmp_path / "out"), "--output", str(tmp_path / "b")]
    with pytest.raises(mc.ConfigError, match="model_config.json"):
        convert.orbax_to_hf(tmp_path / "out", tmp_path / "b")
    # --preset supplies the config instead.
    assert convert.main([*argv, "--preset", "tiny-llama"]) == 0
    assert (tmp_path / "b" / "model.safetensors").exists()
