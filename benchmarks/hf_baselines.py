"""The transformers side of `--compare_hf`: the same architecture in PyTorch.

    HfRunner   train step: CausalLM loss (labels -100 where our loss weight is 0),
               backward, grad-norm clipping, fused AdamW (benchmarks.train_step)
    HfDecoder  `generate`, greedy or beam search, KV cache on (benchmarks.decode)

Both build the model from `models.config.to_hf_config(cfg)` with random weights on
the device kind JAX runs on: the GPU when JAX's is one (an error if torch sees no CUDA
device, a CPU build: the ratio would be a GPU's against a CPU's), else the CPU. torch
and transformers are benchmark-only requirements (requirements-test.txt), imported
when a runner is made: the rest of `benchmarks/` and the project run without them.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from benchmarks import report
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config


def torch_device(jax_platform: str, cuda_available: bool) -> str:
    """The torch device of the JAX platform's kind: "cuda" for "gpu", "cpu" for "cpu";
    RuntimeError where torch cannot run on that kind (a TPU; a GPU without CUDA torch)."""
    if jax_platform == "gpu":
        if not cuda_available:
            raise RuntimeError(
                "JAX runs on the GPU but torch sees no CUDA device (a CPU build of torch?): "
                "the comparison would be against the CPU; install torch with CUDA"
            )
        return "cuda"
    if jax_platform == "cpu":
        return "cpu"
    raise RuntimeError(f"transformers is not run on {jax_platform} here: --compare_hf is GPU/CPU")


def _model(cfg: model_config.ModelConfig, dtype: str, seed: int):
    """(torch, device, model): transformers' CausalLM for `cfg`, random weights from
    `seed`, parameters in `dtype`, on the device kind JAX runs on (`torch_device`)."""
    import jax
    import torch
    import transformers

    device = torch_device(jax.default_backend(), torch.cuda.is_available())
    torch.manual_seed(seed)
    hf_cfg = transformers.AutoConfig.for_model(**model_config.to_hf_config(cfg))
    # Built (and randomly initialised) on the device itself: on the CPU, initialising a
    # billion parameters takes a good part of a GPU check's minute per model.
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=getattr(torch, dtype))
    return torch, device, model


def _sync(torch, device: str) -> None:
    """Waits for queued CUDA work, so that timings cover it (nothing to wait for on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


class HfRunner:
    """transformers' CausalLM + torch AdamW on the same tokens (see module docstring)."""

    def __init__(self, cfg, batch_np, dtype: str, seed: int = 0):
        # float32 master weights; --dtype bfloat16 is autocast, as HF Trainer's bf16=True.
        self.torch, self.device, self.model = _model(cfg, "float32", seed)
        torch = self.torch
        self.model.train()
        fused = {"fused": True} if self.device == "cuda" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0, **fused)
        self.autocast = dtype != "float32"
        self.amp_dtype = getattr(torch, dtype)
        self.ids = torch.as_tensor(batch_np[ts.INPUTS]).long().to(self.device)
        # HF shifts labels inside the model: label j is the target of position j - 1.
        # Position seq - 1's target lies outside `ids`, so HF has no loss there.
        labels = self.ids.clone()
        unweighted = torch.as_tensor(batch_np[ts.WEIGHTS][:, :-1] == 0).to(self.device)
        labels[:, 1:][unweighted] = -100
        self.labels = labels
        self.rows = int(self.ids.shape[0])
        self.info = {
            "device": self.device,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "params": int(sum(p.numel() for p in self.model.parameters())),
        }
        self._fit_batch()
        self.times, self.cpu_times = [], []

    def _step(self):
        torch = self.torch
        with torch.autocast(self.device, dtype=self.amp_dtype, enabled=self.autocast):
            loss = self.model(input_ids=self.ids, labels=self.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def _fit_batch(self):
        """Two untimed steps; on GPU out-of-memory, halve the batch and retry. Two,
        because AdamW allocates its moments in the first step's update, after that step's
        activations are freed: the second step is the first to hold both (measured on an
        H200: bloom-560m at 8 x 2048 passed one step and ran out of memory in the next)."""
        torch = self.torch
        while True:
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                for _ in range(2):
                    self._step()
                _sync(torch, self.device)
                return
            except torch.OutOfMemoryError:
                if self.rows == 1:
                    raise
                report.progress(f"transformers: batch {self.rows} ran out of memory, halving")
            # Outside the handler: the failed step's tensors (held by the traceback)
            # are released before the cache is emptied.
            self.opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            self.rows //= 2
            self.ids = self.ids[: self.rows].contiguous()
            self.labels = self.labels[: self.rows].contiguous()

    def run(self, steps: int) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        loss = None
        for _ in range(steps):
            loss = self._step()
        self.info["loss"] = round(float(loss.detach()), 4)
        _sync(self.torch, self.device)
        self.cpu_times.append((time.process_time() - cpu) / steps)
        self.times.append((time.perf_counter() - start) / steps)

    def peak_memory_bytes(self) -> int | None:
        if self.device != "cuda":
            return None
        return int(self.torch.cuda.max_memory_allocated())

    def close(self):
        del self.model, self.opt, self.ids, self.labels
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


class HfDecoder:
    """transformers' generate on `hf_batch` of the same prompts."""

    def __init__(self, cfg, dcfg, prompts: np.ndarray, dtype: str, seed: int = 0):
        self.torch, self.device, self.model = _model(cfg, dtype, seed)
        torch = self.torch
        self.model.eval()
        self.model.generation_config.eos_token_id = None  # run to max_new_tokens
        self.ids = torch.as_tensor(prompts).long().to(self.device)
        self.kwargs = dict(
            max_new_tokens=dcfg.max_new_tokens,
            min_new_tokens=dcfg.max_new_tokens,
            do_sample=False,
            num_beams=dcfg.num_beams if dcfg.effective_method == "beam" else 1,
            length_penalty=dcfg.length_penalty,
            pad_token_id=0,
            use_cache=True,
        )
        self.attn_impl = getattr(self.model.config, "_attn_implementation", None)
        self.time()  # untimed first run: kernel selection and caches, as our compile run

    def time(self) -> float:
        torch = self.torch
        _sync(torch, self.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                self.ids, attention_mask=torch.ones_like(self.ids), **self.kwargs
            )
        _sync(torch, self.device)
        if out.shape[1] != self.ids.shape[1] + self.kwargs["max_new_tokens"]:
            # Fewer tokens than ours would inflate transformers' rate.
            raise RuntimeError(
                f"transformers generated {out.shape[1] - self.ids.shape[1]} tokens, "
                f"not {self.kwargs['max_new_tokens']}"
            )
        return time.perf_counter() - start
