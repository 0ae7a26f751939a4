"""Tiny random transformers models: the reference the decoder and decoding tests compare to.

A helper, not a test module (pytest collects only `test_*.py`). Tests import it as
`from hf_reference import make_hf_model`, like `from conftest import REAL_DATA_DIR`: tests/
has no `__init__.py`, so pytest puts tests/ itself on `sys.path`. torch and transformers are
imported on call (they are pinned in requirements-test.txt; the test modules import them
plainly, so a broken install fails the suite instead of skipping the parity tests).
"""

from ecomgpt_jax.models import config as mc


def make_hf_model(preset: str, seed: int = 0, eos_boost: float | None = None):
    """A random float32 HF model with the preset's architecture, in eval mode.

    Norms and biases are perturbed away from their 1/0 init (0.1 * N(0, 1), drawn from
    `torch.manual_seed(seed)`) so every parameter matters. `eos_boost` scales the EOS row of
    the input embedding (tied to the head in the tiny presets), so a random model says EOS
    often enough to end some rows early.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = mc.get_preset(preset)
    hf_cfg = transformers.AutoConfig.for_model(**mc.to_hf_config(cfg))
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
        if eos_boost is not None:
            model.get_input_embeddings().weight[cfg.eos_id] *= eos_boost
    return model.eval()
