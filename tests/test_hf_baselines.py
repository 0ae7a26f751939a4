"""benchmarks/hf_baselines.py: the transformers sides of --compare_hf, the train step
(`HfRunner`) and generate (`HfDecoder`)."""

import numpy as np
import pytest

from benchmarks import hf_baselines
from benchmarks import train_step as bt
from ecomgpt_jax import decoding
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as mc

TINY = mc.get_preset("tiny-bloom")


def test_transformers_runner_trains_on_the_same_weighted_targets():
    """HF's loss (labels with -100) is the mean CE over our weighted positions and
    targets, except the last position, whose target is not among HF's input ids."""
    import torch

    batch_np = bt.synthetic_batch(TINY.vocab_size, 2, 16, answer_fraction=0.25, seed=3)
    runner = hf_baselines.HfRunner(TINY, batch_np, "float32")
    try:
        assert runner.info["device"] == "cpu"  # where JAX runs here; recorded in hf
        with torch.no_grad():
            logits = runner.model(input_ids=runner.ids).logits
            loss = runner.model(input_ids=runner.ids, labels=runner.labels).loss
        mask = torch.as_tensor(batch_np[ts.WEIGHTS][:, :-1] > 0)
        assert int(mask.sum()) == 2 * 3  # 4 weighted per row, the last one not in HF
        targets = torch.as_tensor(batch_np[ts.TARGETS][:, :-1]).long()
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1][mask], targets[mask], reduction="mean"
        )
        np.testing.assert_allclose(float(loss), float(ce), rtol=1e-6)
    finally:
        runner.close()


def test_transformers_runner_halves_the_batch_when_its_second_step_runs_out_of_memory(
    monkeypatch, capsys
):
    """The second step is the first to hold AdamW's moments too: an out-of-memory error
    there (as bloom-560m at 8 x 2048 on an H200) halves the batch like one in the first."""
    import torch

    calls = []
    real_step = hf_baselines.HfRunner._step

    def step(self):
        calls.append(self.rows)
        if self.rows > 2 and len(calls) % 2 == 0:  # every batch's second step
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self)

    monkeypatch.setattr(hf_baselines.HfRunner, "_step", step)
    batch_np = bt.synthetic_batch(TINY.vocab_size, 8, 16, seed=3)
    runner = hf_baselines.HfRunner(TINY, batch_np, "float32")
    try:
        assert calls == [8, 8, 4, 4, 2, 2]
        assert runner.rows == 2 and tuple(runner.ids.shape) == tuple(runner.labels.shape) == (2, 16)
        err = capsys.readouterr().err
        assert "transformers: batch 8 ran out of memory, halving" in err
        assert "transformers: batch 4 ran out of memory, halving" in err
    finally:
        runner.close()


def test_hf_decoder_generates_exactly_new_tokens_with_eos_off():
    """Every sequence runs to max_new_tokens (EOS off), as ours do in the benchmark, so
    that both sides decode the same number of tokens."""
    import torch

    dcfg = decoding.DecodeConfig(method="beam", num_beams=4, max_new_tokens=5)
    prompts = np.arange(2 * 6).reshape(2, 6) % TINY.vocab_size
    hf = hf_baselines.HfDecoder(TINY, dcfg, prompts, "float32")
    assert hf.kwargs["num_beams"] == 4 and hf.kwargs["min_new_tokens"] == 5
    assert hf.model.generation_config.eos_token_id is None
    with torch.no_grad():
        out = hf.model.generate(hf.ids, attention_mask=torch.ones_like(hf.ids), **hf.kwargs)
    assert tuple(out.shape) == (2, 6 + 5)
    np.testing.assert_array_equal(out[:, :6].numpy(), prompts)
    assert hf.time() > 0  # the timed call checks the same length ...
    short = out[:, : 6 + 2]  # ... and refuses fewer tokens than ours (its rate would be inflated)
    hf.model.generate = lambda *args, **kwargs: short
    with pytest.raises(RuntimeError, match="^transformers generated 2 tokens, not 5$"):
        hf.time()


def test_transformers_runs_on_the_device_kind_jax_runs_on():
    """A GPU's figures are never compared with a CPU's: a CPU build of torch on a GPU
    machine is an error, and JAX on the CPU keeps torch there too."""
    assert hf_baselines.torch_device("gpu", cuda_available=True) == "cuda"
    assert hf_baselines.torch_device("cpu", cuda_available=True) == "cpu"
    assert hf_baselines.torch_device("cpu", cuda_available=False) == "cpu"
    with pytest.raises(RuntimeError, match="JAX runs on the GPU but torch sees no CUDA device"):
        hf_baselines.torch_device("gpu", cuda_available=False)
    with pytest.raises(RuntimeError, match="transformers is not run on tpu here"):
        hf_baselines.torch_device("tpu", cuda_available=False)
