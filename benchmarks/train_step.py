"""Training-step throughput and MFU of the project's train step, beside transformers.

    python -m benchmarks.train_step --preset bench-bloom-cpu --batch 8 --seq 512 --compare_hf
    python -m benchmarks.train_step --preset bloom-560m --batch 8 --seq 2048 \\
        --dtype bfloat16 --attention_impl cudnn --compare_hf          # on a GPU
    python -m benchmarks.train_step --preset bloomz-1b1 --batch 8 --seq 2048 \\
        --dtype bfloat16 --compile_only       # memory analysis only, any backend

The step is the real one (`ecomgpt_jax.train_step.make_train_step` + `jit_train_step`:
AdamW with clipping, answer-token loss, donated state) on synthetic token batches
(uniform random tokens, `--segments` packed sequences per row). It never imports
TensorFlow, SeqIO or gin. By default every token carries loss weight;
`--answer_fraction F` weights only the last F of each packed sequence, as instruction
tuning weights only the answer that ends each example. On EcomInstruct F is about
0.1: `benchmarks.input_pipeline` on the bundled sample packs 1.69e5 tokens/s of which
1.69e4 are answer tokens (RESULTS.md, 2026-11-26 18:43). The loss evaluates the LM
head only at weighted positions (`models/losses.py`); transformers computes it at
every position and masks (labels -100). Both train on the same weighted positions,
except that transformers has no loss at a row's last position (its target is not
among transformers' input ids): 50 instead of 51 answer tokens a row at seq 512.

FLOP count per step (what MFU divides by), for T = batch * seq tokens:

    6 * N * T                      N = matmul weights of the layers: per layer
                                   D*(H + 2K)*Hd (q, k, v) + H*Hd*D (out) + 2*D*F
                                   (BLOOM up/down) or 3*D*F (Llama gate/up/down);
                                   embeddings, norms and biases excluded
  + 12 * layers * H * Hd * S * T   attention scores and values (QK^T and PV, forward 4
                                   FLOPs per (query, key, head-dim) triple, x3 for the
                                   backward), S = seq; NOT halved for causality (the
                                   PaLM appendix-B convention), so MFU counts the work
                                   of a dense S x S kernel
  + 6 * D * V * A                  LM head (tied or not), A = tokens with loss weight
                                   (= T unless --answer_fraction): a position without
                                   loss weight needs no logits, so MFU counts useful
                                   work only

MFU = FLOPs / step time / (devices * bf16 dense peak of the device, see
`benchmarks.report.PEAK_FLOPS`); null on CPU. Peak memory (`peak_memory_gb`) is the
device allocator's `peak_bytes_in_use` (null on CPU; `compiled_temp_gb` is XLA's
scratch size for the step, on every backend); every `*_gb` field is in GiB (2**30
bytes).

`--compare_hf` (on a 1-device mesh only: transformers runs on one device) trains the
same architecture in PyTorch transformers (random init from `to_hf_config`) on the
same token batch in the same process: float32 on CPU; on GPU float32 parameters
with bf16 autocast and fused AdamW (the standard mixed-precision recipe; our `--dtype
bfloat16` likewise keeps float32 parameters and computes in bf16). transformers'
default attention is used (SDPA for Llama/Qwen2, eager for BLOOM, which has no SDPA
path). If transformers runs out of GPU memory its batch is halved until it fits
(reported as `hf.batch`). On CPU the two are timed in interleaved rounds so that
load from other processes hits both alike; each reported step time is the median
over rounds, and `speedup_vs_hf_paired` is the median of the round-by-round ratios of
tokens/s (the box's speed drifts by 10-20% between minutes; a round's two timings are
seconds apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import time

# Allocate GPU memory on demand so transformers can share the device in this process.
# JAX's allocator still stops at XLA_PYTHON_CLIENT_MEM_FRACTION of the card (75% unless
# set): on an H100 80GB (2026-11-27) the unrolled bloomz-1b1 train step ran out of memory
# asking for a 30.5 GiB temp buffer beside 17 GB of parameters and optimizer state.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import op_profile, report  # noqa: E402
from benchmarks.hf_baselines import HfRunner  # noqa: E402
from ecomgpt_jax import partitioning  # noqa: E402
from ecomgpt_jax import train_step as ts  # noqa: E402
from ecomgpt_jax.models import config as model_config  # noqa: E402
from ecomgpt_jax.models import decoder  # noqa: E402

# float32 logits of one loss chunk are kept under this many bytes (auto chunking):
# cache-sized blocks on CPU, large matmuls on accelerators. 2 GiB gives bloom-560m at
# 8 x 2048 chunks of 256 positions (the GPU run configs' StepConfig.loss_chunk_size);
# on an H200 one run each gave 0.2023 s vs 0.207 s with 128 (RESULTS.md, 2026-11-27
# 12:06 vs 12:01): plausible, not conclusive.
LOSS_CHUNK_BYTES = {"cpu": 64 << 20, "default": 2 << 30}


# ----------------------------------------------------------------------------- FLOPs


def layer_matmul_params(cfg: model_config.ModelConfig) -> int:
    """N: weights of all layers that take part in matmuls (no embeddings/norms/biases)."""
    d, h, k, hd, f = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim
    attn = d * (h + 2 * k) * hd + h * hd * d
    mlp = (2 if cfg.family == "bloom" else 3) * d * f
    return cfg.layers * (attn + mlp)


def train_flops(
    cfg: model_config.ModelConfig, batch: int, seq: int, weighted: int | None = None
) -> dict[str, float]:
    """FLOPs of one training step (forward + backward), by term; see the module docstring.

    `weighted`: tokens with loss weight in the batch (default: all batch * seq)."""
    tokens = batch * seq
    dense = 6.0 * layer_matmul_params(cfg) * tokens
    attention = 12.0 * cfg.layers * cfg.heads * cfg.head_dim * seq * tokens
    lm_head = 6.0 * cfg.hidden * cfg.vocab_size * (tokens if weighted is None else weighted)
    return {
        "dense": dense,
        "attention": attention,
        "lm_head": lm_head,
        "total": dense + attention + lm_head,
    }


def _flops(cfg, batch_np: dict, rows: int) -> float:
    """train_flops of the first `rows` rows of a synthetic batch (its loss weights)."""
    weights = batch_np[ts.WEIGHTS][:rows]
    return train_flops(cfg, rows, weights.shape[1], int(np.count_nonzero(weights)))["total"]


# ----------------------------------------------------------------------------- data


def synthetic_batch(
    vocab: int,
    batch: int,
    seq: int,
    segments: int = 1,
    seed: int = 0,
    answer_fraction: float = 1.0,
):
    """Random tokens as the train step's features: dict name -> np.ndarray [batch, seq].

    Each row holds `segments` equal packed sequences; the last `answer_fraction` of
    each (at least one token) carries loss weight 1, the rest 0.
    """
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, vocab, size=(batch, seq + 1)).astype(np.int32)
    bounds = np.linspace(0, seq, segments + 1).astype(int)
    seg = np.zeros((seq,), np.int32)
    pos = np.zeros((seq,), np.int32)
    weights = np.zeros((seq,), np.float32)
    for i in range(segments):
        start, end = bounds[i], bounds[i + 1]
        seg[start:end] = i + 1
        pos[start:end] = np.arange(end - start)
        answer = max(1, round(answer_fraction * (end - start)))
        weights[end - answer : end] = 1.0
    return {
        ts.INPUTS: tokens[:, :-1],
        ts.TARGETS: tokens[:, 1:],
        ts.WEIGHTS: np.broadcast_to(weights, (batch, seq)).copy(),
        ts.SEGMENT_IDS: np.broadcast_to(seg, (batch, seq)).copy(),
        ts.POSITIONS: np.broadcast_to(pos, (batch, seq)).copy(),
    }


def auto_loss_chunk(cfg: model_config.ModelConfig, batch: int, seq: int, platform: str) -> int:
    """Chunk (positions per row) for the fused LM-head loss: the largest divisor of `seq` (at most
    seq / 2) whose float32 logits [batch, chunk, V] fit LOSS_CHUNK_BYTES[platform]."""
    budget = LOSS_CHUNK_BYTES.get(platform, LOSS_CHUNK_BYTES["default"])
    for chunk in range(seq // 2, 0, -1):
        if seq % chunk == 0 and batch * chunk * cfg.vocab_size * 4 <= budget:
            return chunk
    return 1 if seq > 1 else 0  # a 1-token row has no smaller chunk: unchunked


# ----------------------------------------------------------------------------- runners


def _compiled_step(cfg, step_config: ts.StepConfig, mesh, batch_np, seed: int | None):
    """(compiled, state, batch, compile_s): the project's jitted, state-donating train
    step compiled for `batch_np`'s shapes. With a seed, state and batch are initialised
    device arrays; with None they are abstract (shapes and shardings, nothing allocated)."""
    model = decoder.Decoder(cfg)
    tx = ts.make_optimizer(ts.OptimizerConfig(learning_rate=1e-5), total_steps=1000)
    with jax.set_mesh(mesh), partitioning.axis_rules():
        layout = ts.state_layout(model, tx, mesh)
        sharding = partitioning.data_sharding(mesh)
        if seed is None:
            state = layout.abstract
            batch = {
                k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
                for k, v in batch_np.items()
            }
        else:
            state = ts.init_state(model, tx, layout, seed)
            batch = jax.device_put(batch_np, sharding)
        step = ts.jit_train_step(
            ts.make_train_step(model, tx, step_config, layout.shardings.params), layout, sharding
        )
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - start


def _params(state) -> int:
    return int(sum(x.size for x in jax.tree.leaves(state.params)))


def compile_only(cfg, step_config: ts.StepConfig, mesh, batch_np) -> dict:
    """Compiles the step for abstract state and batch (nothing is allocated) and returns
    XLA's memory analysis: what a run would need on this backend, e.g. to choose a remat
    policy before an accelerator is at hand (a CPU compile's figures are the CPU's)."""
    compiled, state, _, compile_s = _compiled_step(cfg, step_config, mesh, batch_np, None)
    return {
        "params": _params(state),
        "compile_s": round(compile_s, 2),
        "compiled_temp_gb": report.gib(_memory_bytes(compiled, "temp")),
        "compiled_argument_gb": report.gib(_memory_bytes(compiled, "argument")),
    }


class JaxRunner:
    """The project's jitted, state-donating train step on one fixed device batch."""

    def __init__(self, cfg, step_config: ts.StepConfig, mesh, batch_np, seed: int = 0):
        self.compiled, self.state, self.batch, self.compile_s = _compiled_step(
            cfg, step_config, mesh, batch_np, seed
        )
        report.progress(f"jax: step compiled in {self.compile_s:.1f} s")
        self.rows = int(batch_np[ts.INPUTS].shape[0])
        self.info = {
            "params": _params(self.state),
            "compile_s": round(self.compile_s, 2),
            "compiled_temp_gb": report.gib(_memory_bytes(self.compiled, "temp")),
        }
        self.forget_times()
        self.run(1)  # first execution (allocations, autotuning) is not timed
        self.forget_times()

    def forget_times(self) -> None:
        """Drop the timings so far (untimed warm-up or profiled steps)."""
        self.times, self.cpu_times = [], []

    def run(self, steps: int) -> None:
        """Times `steps` steps (seconds per step appended to .times). The only host
        sync is reading the last step's loss."""
        start, cpu = time.perf_counter(), time.process_time()
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        self.info["loss"] = round(float(metrics["loss"]), 4)
        self.cpu_times.append((time.process_time() - cpu) / steps)
        self.times.append((time.perf_counter() - start) / steps)

    def peak_memory_bytes(self) -> int | None:
        return report.peak_memory_bytes(jax.devices()[0])

    def close(self):
        del self.state, self.batch, self.compiled


def _memory_bytes(compiled, kind: str) -> int | None:
    """XLA's `<kind>_size_in_bytes` ("temp", "argument") of a compiled step, if reported."""
    try:
        return int(getattr(compiled.memory_analysis(), f"{kind}_size_in_bytes"))
    except Exception:  # noqa: BLE001 - not every backend/version reports it
        return None


def _summary(runner, cpu_backend: bool) -> dict:
    """Timing (median and best over rounds) and facts of a runner, before it is closed."""
    out = {
        "batch": runner.rows,
        "step_time_s": round(statistics.median(runner.times), 5),
        "step_time_min_s": round(min(runner.times), 5),
        "cpu_s_per_step": round(statistics.median(runner.cpu_times), 4) if cpu_backend else None,
        "peak_memory_gb": report.gib(runner.peak_memory_bytes()),
    }
    if cpu_backend:  # interleaved rounds: kept for the round-by-round ratio
        out["round_times_s"] = [round(t, 4) for t in runner.times]
    out.update(runner.info)
    return out


def paired_speedup(ours: dict, hf: dict) -> float | None:
    """Median over interleaved rounds of (our tokens/s / transformers') in the same
    round: steadier than the ratio of medians when the box's speed drifts between
    rounds. None when the rounds were not interleaved."""
    a, b = ours.get("round_times_s"), hf.get("round_times_s")
    if not a or not b or len(a) != len(b):
        return None
    # Rows per step differ when transformers halved its batch to fit.
    rows = ours["batch"] / hf["batch"]
    return round(statistics.median(h / o * rows for o, h in zip(a, b, strict=True)), 3)


def measure(makers: dict, steps: int, rounds: int, interleave: bool) -> dict[str, dict]:
    """name -> summary dict (or {"error": ...}) for each runner factory in `makers`.

    interleave=True (CPU): all runners are built, then timed in alternating rounds, so
    that load from other processes hits them alike. Otherwise (accelerators) each runner
    is built, timed and closed before the next one is built, to free device memory.
    A runner that fails is reported with its error; the others still run.
    """
    results: dict[str, dict] = {}

    def failed(name: str, e: BaseException) -> None:
        results[name] = {"error": report.first_line(e)}
        report.progress(f"{name}: failed: {results[name]['error'][:200]}")

    if interleave:
        built = {}
        for name, make in makers.items():
            report.progress(f"{name}: building")
            try:
                built[name] = make()
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                failed(name, e)
        for i in range(rounds):
            for name, runner in list(built.items()):
                try:
                    runner.run(steps)
                    report.progress(f"{name}: round {i + 1}: {runner.times[-1]:.4f} s/step")
                except Exception as e:  # noqa: BLE001
                    failed(name, e)
                    del built[name]
        for name, runner in built.items():
            results[name] = _summary(runner, cpu_backend=True)
            runner.close()
        return {name: results[name] for name in makers}
    for name, make in makers.items():
        runner = None
        report.progress(f"{name}: building")
        try:
            runner = make()
            for i in range(rounds):
                runner.run(steps)
                report.progress(f"{name}: round {i + 1}: {runner.times[-1]:.4f} s/step")
            results[name] = _summary(runner, cpu_backend=False)
        except Exception as e:  # noqa: BLE001
            failed(name, e)
        if runner is not None:
            runner.close()
        del runner
        gc.collect()
    return results


def _add_rates(summary: dict, cfg, batch_np: dict, peak: float | None, devices: int) -> dict:
    """tokens/s, TFLOP/s per device and MFU from a runner summary (in place)."""
    if "error" in summary:
        return summary
    t = summary["step_time_s"]
    seq = batch_np[ts.WEIGHTS].shape[1]
    flops = _flops(cfg, batch_np, summary["batch"])
    summary["tokens_per_s"] = round(summary["batch"] * seq / t, 1)
    summary["tflops_per_s_per_device"] = round(flops / t / devices / 1e12, 4)
    summary["mfu"] = None if peak is None else round(flops / t / (peak * devices), 4)
    return summary


# ----------------------------------------------------------------------------- main


_loss_chunk = report.number_arg(
    int, lambda v: v >= -1, "{text!r}: use -1 (auto), 0 (off) or a length"
)
_fraction = report.number_arg(float, lambda v: 0.0 < v <= 1.0, "{text!r}: use a number in (0, 1]")


def parse_args(argv=None) -> argparse.Namespace:
    count = report.positive_int
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--preset", default="bench-bloom-cpu", help="a gin_configs/models/*.gin name")
    p.add_argument("--batch", type=count, default=8, help="global batch (rows)")
    p.add_argument("--seq", type=count, default=512, help="tokens per row")
    p.add_argument(
        "--mesh",
        type=report.mesh_shape,
        default=(-1, 1, 1),
        help="data,fsdp,tensor sizes (one may be -1)",
    )
    p.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
    p.add_argument("--steps", type=count, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=count, default=3, help="timed rounds (median and min reported)")
    p.add_argument("--segments", type=count, default=1, help="packed sequences per row")
    p.add_argument(
        "--answer_fraction",
        type=_fraction,
        default=1.0,
        help="loss-weighted share of each packed sequence (its end); EcomInstruct: ~0.1",
    )
    p.add_argument("--remat", default=None, help="override the preset's remat_policy")
    p.add_argument("--logits_dtype", default=None, help="float32 (default) | bfloat16")
    p.add_argument("--attention_impl", default=None, help="xla | cudnn (default: preset's)")
    p.add_argument("--scan_layers", default=None, choices=("true", "false"))
    p.add_argument("--loss_chunk", type=_loss_chunk, default=-1, help="-1 auto, 0 off, else length")
    p.add_argument("--microbatches", type=count, default=1)
    p.add_argument(
        "--override", action="append", default=[], help="ModelConfig field=JSON value, repeatable"
    )
    p.add_argument(
        "--compare_hf", action="store_true", help="also time transformers (1-device mesh only)"
    )
    p.add_argument(
        "--compile_only",
        action="store_true",
        help="compile for abstract state and report XLA's memory analysis; run nothing",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="after timing, trace --steps more steps of ours into DIR and print the "
        "operations that take the device time (benchmarks/op_profile.py; on GPU this "
        "turns off XLA's CUDA graphs for the whole run)",
    )
    p.add_argument("--profile_top", type=count, default=25, help="rows of the --profile table")
    p.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
    return p.parse_args(argv)


def model_config_from_args(args) -> model_config.ModelConfig:
    cfg = model_config.get_preset(args.preset)
    overrides = {"dtype": args.dtype}
    if args.remat is not None:
        overrides["remat_policy"] = args.remat
    if args.logits_dtype is not None:
        overrides["logits_dtype"] = args.logits_dtype
    if args.attention_impl is not None:
        overrides["attention_impl"] = args.attention_impl
    if args.scan_layers is not None:
        overrides["scan_layers"] = args.scan_layers == "true"
    fields = {f.name for f in dataclasses.fields(cfg)}
    for item in args.override:
        key, _, value = item.partition("=")
        if key not in fields:
            raise report.BenchmarkError(f"--override {item}: ModelConfig has no field {key!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError as e:
            raise report.BenchmarkError(
                f"--override {item}: the value is not JSON ({e.msg}); strings need quotes"
            ) from None
    return dataclasses.replace(cfg, **overrides)


def check_options(args, mesh) -> None:
    """BenchmarkError for options the step cannot run with (before anything is built)."""
    for flag, given in (("--compare_hf", args.compare_hf), ("--profile", args.profile)):
        if args.compile_only and given:
            raise report.BenchmarkError(f"--compile_only runs nothing: drop {flag}")
    if args.compare_hf:
        report.check_compare_hf_mesh(mesh)
    if args.compare_hf and args.segments != 1:
        raise report.BenchmarkError(
            "--compare_hf needs --segments 1 (transformers has no packing here)"
        )
    if args.segments > args.seq:
        raise report.BenchmarkError(f"--segments {args.segments} exceeds --seq {args.seq}")
    if args.loss_chunk > 0 and not ts.splits_rows(args.loss_chunk, args.seq):
        # The step refuses a chunk that does not split the row into several.
        raise report.BenchmarkError(
            f"--loss_chunk {args.loss_chunk} must divide --seq {args.seq} and be smaller "
            "(0: unchunked)"
        )
    if args.batch % args.microbatches:
        raise report.BenchmarkError(
            f"--batch {args.batch} is not divisible by --microbatches {args.microbatches}"
        )
    report.check_batch_over_mesh(args.batch, mesh)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.profile:
        # Before the backend starts: kernels inside CUDA graphs do not name their operation.
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = op_profile.without_command_buffers(flags)
    with report.exit_on_user_error():
        cfg = model_config_from_args(args)
        mesh = partitioning.make_mesh(partitioning.MeshConfig(args.mesh))
        check_options(args, mesh)
    return run(args, cfg, mesh)


def run(args, cfg, mesh) -> dict:
    """Measures (or compiles only) with checked options; a row is recorded only when the
    project's step produced numbers."""
    device = jax.devices()[0]
    chunk = args.loss_chunk
    if chunk < 0:
        chunk = auto_loss_chunk(cfg, args.batch, args.seq, device.platform)
    step_config = ts.StepConfig(num_microbatches=args.microbatches, loss_chunk_size=chunk)
    batch_np = synthetic_batch(
        cfg.vocab_size, args.batch, args.seq, args.segments, answer_fraction=args.answer_fraction
    )
    settings = {
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "mesh": list(mesh.devices.shape),
        "dtype": cfg.dtype,
        "remat": cfg.remat_policy,
        "scan_layers": cfg.scan_layers,
        "logits_dtype": cfg.logits_dtype,
        "attention_impl": cfg.attention_impl,
        "loss_chunk": chunk,
        "answer_fraction": args.answer_fraction,
    }
    if args.profile:  # the whole run, timed rounds too, ran without CUDA graphs
        settings["command_buffers"] = "off (--profile)"
    if args.compile_only:
        record = {"bench": "train_step_compile", **settings}
        record.update(compile_only(cfg, step_config, mesh, batch_np))
        report.emit(record)
        if not args.no_record:
            report.append_result(report.command_line("benchmarks.train_step"), record)
        return record

    makers = {}
    if args.compare_hf:
        # transformers first: on a GPU it then frees its memory before JAX allocates.
        makers["hf"] = lambda: HfRunner(cfg, batch_np, args.dtype)
    profiled = {}

    def make_ours():
        runner = JaxRunner(cfg, step_config, mesh, batch_np)
        if args.profile:
            # Traced here, while the runner lives (measure closes it after its rounds).
            try:
                rows, total = op_profile.trace_and_summarize(
                    runner.run, args.steps, args.profile, args.profile_top
                )
                profiled.update(profile_ms_per_step=total, profile_top=rows)
            except Exception as e:  # noqa: BLE001 - the timings are still worth having
                profiled["profile_error"] = report.first_line(e)
            runner.forget_times()
        return runner

    makers["jax"] = make_ours
    results = measure(makers, args.steps, args.rounds, interleave=device.platform == "cpu")

    peak = report.peak_flops_per_device(device)
    ours = _add_rates(results["jax"], cfg, batch_np, peak, mesh.size)
    record = {
        "bench": "train_step",
        **settings,
        **{k: v for k, v in ours.items() if k != "batch"},
        "flops_per_step": _flops(cfg, batch_np, args.batch),
    }
    if "hf" in results:
        record["hf"] = _add_rates(results["hf"], cfg, batch_np, peak, 1)
        if "error" not in ours and "error" not in record["hf"]:
            speedup = ours["tokens_per_s"] / record["hf"]["tokens_per_s"]
            record["speedup_vs_hf"] = round(speedup, 3)
            paired = paired_speedup(ours, record["hf"])
            if paired is not None:
                record["speedup_vs_hf_paired"] = paired
    record.update({k: v for k, v in profiled.items() if k != "profile_top"})
    report.emit(record)
    if "profile_top" in profiled:
        print(f"profile ({args.steps} steps, trace in {args.profile}), device ms per step:")
        print(op_profile.format_table(profiled["profile_top"]), flush=True)
    if "error" in ours:
        raise SystemExit(f"JAX train step failed: {ours['error']}")
    if not args.no_record:
        report.append_result(report.command_line("benchmarks.train_step"), record)
    return record


if __name__ == "__main__":
    main()
