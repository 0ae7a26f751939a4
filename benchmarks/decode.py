"""Decoding throughput (sequences/s, new tokens/s) of `ecomgpt_jax.decoding`, beside transformers.

    python -m benchmarks.decode --preset tiny-bloom --batch 8 --compare_hf        # CPU smoke
    python -m benchmarks.decode --preset bloomz-7b1 --batch 32 --method beam \\
        --prompt_len 512 --new_tokens 164 --compare_hf                           # on a GPU

Synthetic prompts (uniform random tokens, all `--prompt_len` long) and random weights;
EOS is disabled on both sides so that every sequence generates exactly `--new_tokens`
tokens (beam search included: transformers' early-stop heuristic needs finished
hypotheses). One result per method (greedy and beam search with `--num_beams`, paper: 4):

    sequences_per_s   = batch / seconds per batch (median of --repeats timed runs after a
                        compiling warm-up run)
    new_tokens_per_s  = batch * new_tokens / seconds per batch (returned sequences only;
                        beams are not counted)
    peak_memory_gb    the device allocator's peak in GiB (2**30 bytes; RESULTS.md's
                        decode rows up to 2026-11-27 used GB, 1e9 bytes); null on CPU

`--compare_hf` (on a 1-device mesh only: transformers runs on one device) runs
transformers' `generate` on the first `--hf_batch` prompts (default 2, the paper's
evaluation batch size) with the same prompt length, new tokens and method in the same
process (bfloat16 on GPU, float32 on CPU; KV cache on). It adds

    hf                        transformers at batch `hf.batch` (= --hf_batch):
                              seconds_per_batch, sequences_per_s, new_tokens_per_s
    ours_at_hf_batch          ours on the same first --hf_batch prompts (its own
                              compiled program, timed in the same rounds)
    speedup_vs_hf             ours at `batch` / transformers at `hf.batch`, in
                              sequences per second: issue #6's target (20x
                              transformers' generate at batch size 2), where each
                              side runs at its own batch size
    speedup_vs_hf_same_batch  ours_at_hf_batch / transformers: both at `hf.batch`

Each result is a JSON line and a row appended to benchmarks/RESULTS.md
(`benchmarks.report`). Never imports TensorFlow, SeqIO or gin.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

# Allocate GPU memory on demand so transformers can share the device in this process;
# why the memory fraction too: see benchmarks/train_step.py.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.hf_baselines import HfDecoder  # noqa: E402
from ecomgpt_jax import decoding, partitioning  # noqa: E402
from ecomgpt_jax.models import config as model_config  # noqa: E402
from ecomgpt_jax.models import decoder  # noqa: E402

NO_EOS = -1  # never generated: every sequence runs to max_new_tokens


def parse_args(argv=None) -> argparse.Namespace:
    count = report.positive_int
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__)
    p.add_argument("--preset", required=True, help="model preset: a gin_configs/models/*.gin name")
    p.add_argument("--batch", type=count, default=8, help="prompts per decoding batch")
    p.add_argument("--method", choices=("greedy", "beam", "both"), default="both")
    p.add_argument("--num_beams", type=count, default=4)
    p.add_argument("--prompt_len", type=count, default=128)
    p.add_argument("--new_tokens", type=count, default=64)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on GPU)")
    p.add_argument("--attention_impl", choices=model_config.ATTENTION_IMPLS, default="xla")
    p.add_argument(
        "--mesh", type=report.mesh_shape, default=(-1, 1, 1), help="data,fsdp,tensor sizes"
    )
    p.add_argument("--repeats", type=count, default=3)
    p.add_argument("--compare_hf", action="store_true")
    p.add_argument("--hf_batch", type=count, default=2, help="transformers' batch (paper: 2)")
    p.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
    return p.parse_args(argv)


def synthetic_prompts(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """int32 [batch, length] random tokens (ids >= 3, away from special tokens)."""
    return np.random.RandomState(seed).randint(3, vocab, size=(batch, length)).astype(np.int32)


class JaxDecoder:
    """The project's jitted decoding of one fixed batch (compiled in the constructor)."""

    def __init__(self, cfg, dcfg, mesh, prompts: np.ndarray, seed: int = 0, params=None):
        """`params`: another JaxDecoder's (same cfg and mesh), shared rather than a
        second copy on the device; default: random ones from `seed`."""
        self.gen = decoding.Generator(cfg, dcfg, eos_id=NO_EOS, pad_id=0, mesh=mesh)
        if params is None:
            tokens = np.zeros((1, 1), np.int32)
            init = jax.jit(
                lambda key: nn.unbox(decoder.Decoder(cfg).init(key, tokens))["params"],
                out_shardings=self.gen.param_shardings,
            )
            with jax.set_mesh(mesh), partitioning.axis_rules():
                params = init(jax.random.PRNGKey(seed))  # created sharded, never on one host
        self.params = params
        self.num_params = sum(x.size for x in jax.tree.leaves(params))
        self.tokens = prompts
        self.mask = np.ones(prompts.shape, bool)
        self.row_ids = np.arange(prompts.shape[0], dtype=np.int32)
        start = time.perf_counter()
        out = self.run_once()
        self.first_call_s = time.perf_counter() - start  # compile + one run
        assert out.tokens.shape == (prompts.shape[0], dcfg.max_new_tokens)

    def run_once(self):
        return self.gen.decode_batch(self.params, self.tokens, self.mask, self.row_ids)

    def time(self) -> float:
        start = time.perf_counter()
        self.run_once()  # returns host arrays: the timing includes the device sync
        return time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything checked before the first measurement (so no row is recorded for a run
    whose later method would have failed on its options)."""

    cfg: model_config.ModelConfig
    dtype: str
    mesh: jax.sharding.Mesh
    decode_configs: dict[str, decoding.DecodeConfig]  # by method


def setup(args, methods) -> Setup:
    """The checked model, mesh and decoding configs; user errors raise (see report)."""
    on_gpu = jax.devices()[0].platform == "gpu"
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    cfg = dataclasses.replace(
        model_config.get_preset(args.preset),
        param_dtype=dtype,
        dtype=dtype,
        attention_impl=args.attention_impl,
    )
    dcfgs = {
        method: decoding.DecodeConfig(
            method=method,
            num_beams=args.num_beams if method == "beam" else 1,
            max_new_tokens=args.new_tokens,
            max_prompt_len=args.prompt_len,
            min_bucket=args.prompt_len,
        )
        for method in methods
    }
    mesh = partitioning.make_mesh(partitioning.MeshConfig(args.mesh))
    report.check_batch_over_mesh(args.batch, mesh)
    if args.compare_hf and args.hf_batch > args.batch:
        raise report.BenchmarkError(
            f"--hf_batch {args.hf_batch} exceeds --batch {args.batch} (transformers decodes "
            "the first --hf_batch of the same prompts)"
        )
    if args.compare_hf:
        report.check_compare_hf_mesh(mesh)
    return Setup(cfg, dtype, mesh, dcfgs)


def measure(args, checked: Setup, method: str) -> dict:
    cfg, dtype, mesh = checked.cfg, checked.dtype, checked.mesh
    dcfg = checked.decode_configs[method]
    prompts = synthetic_prompts(cfg.vocab_size, args.batch, args.prompt_len)
    report.progress(f"jax {method}: building")
    ours = JaxDecoder(cfg, dcfg, mesh, prompts)
    ours_small = hf = hf_error = None
    if args.compare_hf:
        report.progress(f"jax {method}: building at batch {args.hf_batch}")
        small = prompts[: args.hf_batch]
        ours_small = JaxDecoder(cfg, dcfg, mesh, small, params=ours.params)
        report.progress(f"transformers {method}: building")
        try:  # transformers failing (not installed, out of memory) keeps our figures
            hf = HfDecoder(cfg, dcfg, small, dtype)
        except Exception as e:  # noqa: BLE001 - reported in the record
            hf_error = report.first_line(e)
    times, small_times, hf_times = [], [], []
    for i in range(max(args.repeats, 1)):
        # Interleaved rounds: load from other processes (shared CPUs) hits all alike.
        times.append(ours.time())
        if hf is not None:
            small_times.append(ours_small.time())
            try:
                hf_times.append(hf.time())
            except Exception as e:  # noqa: BLE001 - reported in the record
                hf, hf_error = None, report.first_line(e)
        report.progress(f"{method}: repeat {i + 1} timed")
    seconds = statistics.median(times)
    record = {
        "benchmark": "decode",
        "preset": args.preset,
        "method": dcfg.effective_method,
        "num_beams": dcfg.num_beams,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "dtype": dtype,
        "attention_impl": args.attention_impl,
        "mesh": dict(mesh.shape),
        "params": ours.num_params,
        "first_call_s": ours.first_call_s,
        "seconds_per_batch": seconds,
        "sequences_per_s": args.batch / seconds,
        "new_tokens_per_s": args.batch * args.new_tokens / seconds,
        "peak_memory_gb": report.gib(report.peak_memory_bytes(jax.devices()[0])),
    }
    if hf_error is not None:
        report.progress(f"transformers {method}: failed: {hf_error}")
        record["hf"] = {"error": hf_error}
    elif hf is not None:
        record["hf"] = {"device": hf.device, "attn": hf.attn_impl, **_rates(args, hf_times)}
        record["ours_at_hf_batch"] = _rates(args, small_times)
        hf_rate = record["hf"]["sequences_per_s"]
        record["speedup_vs_hf"] = record["sequences_per_s"] / hf_rate
        same = record["ours_at_hf_batch"]["sequences_per_s"] / hf_rate
        record["speedup_vs_hf_same_batch"] = same
    return record


def _rates(args, times: list[float]) -> dict:
    """Batch, median seconds and rates of runs at --hf_batch prompts."""
    seconds = statistics.median(times)
    return {
        "batch": args.hf_batch,
        "seconds_per_batch": seconds,
        "sequences_per_s": args.hf_batch / seconds,
        "new_tokens_per_s": args.hf_batch * args.new_tokens / seconds,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    methods = ("greedy", "beam") if args.method == "both" else (args.method,)
    with report.exit_on_user_error():
        checked = setup(args, methods)
    command = report.command_line("benchmarks.decode")
    for method in methods:
        record = measure(args, checked, method)
        report.emit(record)
        if "speedup_vs_hf" in record:
            print(
                f"{method}: ours {record['sequences_per_s']:.3g} seq/s at batch {args.batch}, "
                f"transformers {record['hf']['sequences_per_s']:.3g} seq/s at batch "
                f"{args.hf_batch}: ratio {record['speedup_vs_hf']:.2f}x; at batch "
                f"{args.hf_batch} both: {record['speedup_vs_hf_same_batch']:.2f}x",
                flush=True,
            )
        if not args.no_record:
            report.append_result(command, record)


if __name__ == "__main__":
    main()
