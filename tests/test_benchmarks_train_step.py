"""benchmarks/train_step.py: FLOP count, synthetic batches, loss chunking, --compile_only,
the paired speedup, tokens/s, TFLOP/s and MFU from fixed step times, one-line errors."""

import json

import jax
import numpy as np
import pytest
from benchmark_helpers import COMPARE_HF_MESH, assert_one_line_error

from benchmarks import report
from benchmarks import train_step as bt
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as mc
from ecomgpt_jax.models import decoder

TINY = mc.get_preset("tiny-bloom")


def _layer_kernel_sizes(cfg) -> int:
    """Sizes of every `*kernel` parameter under `layers` (the matmul weights)."""
    shapes = decoder.abstract_params(cfg)["layers"]
    flat = jax.tree_util.tree_leaves_with_path(shapes)
    return sum(
        int(np.prod(x.shape)) for path, x in flat if jax.tree_util.keystr(path).endswith("kernel']")
    )


def test_layer_matmul_params_hand_count_and_param_tree():
    # tiny-bloom: D 96, H 6, Hd 16, F 384, 2 layers: qkv 96*6*3*16 + out 6*16*96 + up/down 2*96*384.
    bloom = mc.get_preset("tiny-bloom")
    assert bt.layer_matmul_params(bloom) == 2 * (27648 + 9216 + 73728)
    # tiny-llama: D 64, H 4, K 2, Hd 16, F 128: q 4096 + k, v 2*2048 + out 4096 + 3*64*128.
    llama = mc.get_preset("tiny-llama")
    assert bt.layer_matmul_params(llama) == 2 * (4096 + 4096 + 4096 + 24576)
    for cfg in (bloom, llama, mc.get_preset("tiny-qwen2")):
        assert bt.layer_matmul_params(cfg) == _layer_kernel_sizes(cfg)


def test_train_flops_terms_by_hand():
    cfg = mc.get_preset("tiny-bloom")
    flops = bt.train_flops(cfg, batch=2, seq=8)
    tokens = 16
    assert flops["dense"] == 6 * 221184 * tokens
    # 12 * layers * heads * head_dim * seq * tokens (not halved for causality).
    assert flops["attention"] == 12 * 2 * 6 * 16 * 8 * tokens
    assert flops["lm_head"] == 6 * 96 * 2048 * tokens
    assert flops["total"] == flops["dense"] + flops["attention"] + flops["lm_head"]


def test_train_flops_count_the_lm_head_on_weighted_tokens_only():
    full = bt.train_flops(TINY, batch=2, seq=8)
    answers = bt.train_flops(TINY, batch=2, seq=8, weighted=3)
    assert answers["lm_head"] == 6 * 96 * 2048 * 3
    assert answers["dense"] == full["dense"] and answers["attention"] == full["attention"]


def test_synthetic_batch_weights_the_end_of_each_packed_sequence():
    b = bt.synthetic_batch(vocab=50, batch=2, seq=10, segments=2, answer_fraction=0.4)
    np.testing.assert_array_equal(b[ts.WEIGHTS], [[0, 0, 0, 1, 1, 0, 0, 0, 1, 1]] * 2)
    tiny = bt.synthetic_batch(vocab=50, batch=1, seq=10, segments=2, answer_fraction=0.01)
    np.testing.assert_array_equal(tiny[ts.WEIGHTS], [[0, 0, 0, 0, 1, 0, 0, 0, 0, 1]])


def test_synthetic_batch_packs_equal_segments_with_shifted_targets():
    b = bt.synthetic_batch(vocab=50, batch=2, seq=6, segments=2)
    assert set(b) == set(ts.BATCH_KEYS)
    np.testing.assert_array_equal(b[ts.SEGMENT_IDS], [[1, 1, 1, 2, 2, 2]] * 2)
    np.testing.assert_array_equal(b[ts.POSITIONS], [[0, 1, 2, 0, 1, 2]] * 2)
    np.testing.assert_array_equal(b[ts.INPUTS][:, 1:], b[ts.TARGETS][:, :-1])
    assert b[ts.WEIGHTS].sum() == 12 and b[ts.INPUTS].max() < 50


def test_auto_loss_chunk_divides_and_fits_budget():
    cfg = mc.get_preset("bench-bloom-cpu")  # V = 32000: 64 MiB holds 8 x 64 positions
    assert bt.auto_loss_chunk(cfg, batch=8, seq=512, platform="cpu") == 64
    big = mc.get_preset("bloom-560m")  # 2 GiB at V = 250880: 8 x 256 positions
    assert bt.auto_loss_chunk(big, batch=8, seq=2048, platform="gpu") == 256
    assert bt.auto_loss_chunk(big, batch=16, seq=2048, platform="gpu") == 128
    chunk = bt.auto_loss_chunk(big, batch=8, seq=96, platform="cpu")
    assert 96 % chunk == 0 and 8 * chunk * big.vocab_size * 4 <= bt.LOSS_CHUNK_BYTES["cpu"]
    # Always smaller than the row (the step refuses a chunk of the whole row).
    assert bt.auto_loss_chunk(big, batch=8, seq=2, platform="gpu") == 1
    assert bt.auto_loss_chunk(big, batch=8, seq=1, platform="gpu") == 0


def test_compile_only_reports_the_memory_of_the_step_a_run_compiles(capsys):
    """--compile_only compiles for abstract state (nothing allocated, nothing run): its
    memory analysis is that of the real step compiled here for real arrays, it follows
    the options, and refusing --compare_hf keeps it from timing anything."""

    args = ["--preset", "tiny-bloom", "--batch", "8", "--seq", "256", "--no_record"]
    args += ["--microbatches", "2"]
    record = bt.main(args + ["--compile_only"])
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert printed == [record]
    assert record["bench"] == "train_step_compile" and "step_time_s" not in record
    assert (record["batch"], record["seq"], record["mesh"]) == (8, 256, [8, 1, 1])
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(decoder.abstract_params(TINY)))
    assert record["params"] == params

    # Reference: the project's step (2 microbatches, the record's loss chunk) compiled for
    # initialised state and a device batch, read straight from XLA's memory analysis.
    cfg = bt.model_config_from_args(bt.parse_args(args))
    mesh = bt.partitioning.make_mesh(bt.partitioning.MeshConfig((-1, 1, 1)))
    step_config = ts.StepConfig(num_microbatches=2, loss_chunk_size=record["loss_chunk"])
    model = decoder.Decoder(cfg)
    tx = ts.make_optimizer(ts.OptimizerConfig(learning_rate=1e-3), total_steps=10)
    batch_np = bt.synthetic_batch(cfg.vocab_size, 8, 256)
    with jax.set_mesh(mesh), bt.partitioning.axis_rules():
        layout = ts.state_layout(model, tx, mesh)
        sharding = bt.partitioning.data_sharding(mesh)
        state = ts.init_state(model, tx, layout, 0)
        batch = jax.device_put(batch_np, sharding)
        step = ts.make_train_step(model, tx, step_config, layout.shardings.params)
        analysis = ts.jit_train_step(step, layout, sharding).lower(state, batch).compile()
        analysis = analysis.memory_analysis()
    assert record["compiled_temp_gb"] == round(analysis.temp_size_in_bytes / 2**30, 3) > 0
    # Arguments: float32 parameters and two Adam moments, the int32 batch, a few scalars.
    arrays = 3 * params * 4 + sum(v.nbytes for v in batch_np.values())
    assert record["compiled_argument_gb"] == pytest.approx(arrays / 2**30, abs=1e-3)
    # Full remat keeps fewer activations for the backward.
    full = bt.main(args + ["--compile_only", "--remat", "full"])
    assert full["compiled_temp_gb"] < record["compiled_temp_gb"]
    with pytest.raises(SystemExit) as e:
        bt.main(args + ["--compile_only", "--compare_hf"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: --compile_only runs nothing: drop --compare_hf\n"


class _FakeRunner:
    """A runner whose step takes a scripted time per round (no JAX, no clock)."""

    def __init__(self, times, rows=8, peak_bytes=None):
        self.rows, self.info, self._times = rows, {}, list(times)
        self.times, self.cpu_times = [], []
        self.peak_bytes = peak_bytes

    def run(self, steps):
        self.times.append(self._times.pop(0))
        self.cpu_times.append(0.0)

    def peak_memory_bytes(self):
        return self.peak_bytes

    def close(self):
        pass


def test_paired_speedup_is_the_median_of_round_by_round_ratios():
    # The box slows down 2x in round 3 for both: round ratios are 1.5, 1.5, 1.5, 2.0.
    ours, hf = [2.0, 2.0, 4.0, 2.0], [3.0, 3.0, 6.0, 4.0]
    results = bt.measure(
        {"hf": lambda: _FakeRunner(hf), "jax": lambda: _FakeRunner(ours)},
        steps=1,
        rounds=4,
        interleave=True,
    )
    assert results["jax"]["round_times_s"] == ours and results["hf"]["round_times_s"] == hf
    assert results["jax"]["step_time_s"] == 2.0 and results["hf"]["step_time_s"] == 3.5
    assert bt.paired_speedup(results["jax"], results["hf"]) == 1.5
    # Not interleaved (accelerators): no per-round times, no paired ratio.
    apart = bt.measure({"jax": lambda: _FakeRunner(ours)}, steps=1, rounds=4, interleave=False)
    assert "round_times_s" not in apart["jax"]
    assert bt.paired_speedup(apart["jax"], results["hf"]) is None


def test_train_step_rates_from_a_fixed_step_time(capsys, monkeypatch, one_device):
    """Fake runners (1 ms a step for ours at 8 x 16 tokens; 4 ms for transformers, whose
    batch was halved to 4 rows) and a peak of 2 TFLOP/s a device: tokens/s = rows * seq /
    t, TFLOP/s per device = FLOPs / t / devices, MFU = FLOPs / (t * peak * devices), for
    8 devices and for 1 beside transformers. tiny-bloom at 8 x 16: 325582848 FLOPs a step
    (the hand count of test_train_flops_terms_by_hand at 8 rows)."""
    flops = 6 * 221184 * 128 + 12 * 2 * 6 * 16 * 16 * 128 + 6 * 96 * 2048 * 128
    assert flops == 325582848 == bt.train_flops(TINY, 8, 16)["total"]
    monkeypatch.setattr(report, "peak_flops_per_device", lambda device: 2e12)
    monkeypatch.setattr(bt, "JaxRunner", lambda *a: _FakeRunner([1e-3] * 2, peak_bytes=2**31))
    monkeypatch.setattr(bt, "HfRunner", lambda *a: _FakeRunner([4e-3] * 2, rows=4))
    argv = ["--preset", "tiny-bloom", "--seq", "16", "--rounds", "2", "--steps", "1"]
    argv += ["--no_record"]

    # 8 devices (a mesh over all of them, past the fixture's default of one).
    args = bt.parse_args(argv)
    mesh = bt.partitioning.make_mesh(bt.partitioning.MeshConfig((-1, 1, 1)), jax.devices())
    record = bt.run(args, bt.model_config_from_args(args), mesh)
    assert record["mesh"] == [8, 1, 1]
    assert (record["step_time_s"], record["flops_per_step"]) == (1e-3, flops)
    assert record["tokens_per_s"] == 8 * 16 / 1e-3 == 128000.0
    assert record["tflops_per_s_per_device"] == round(flops / 1e-3 / 8 / 1e12, 4) == 0.0407
    assert record["mfu"] == round(flops / (1e-3 * 2e12 * 8), 4) == 0.0203
    assert record["peak_memory_gb"] == 2.0  # 2**31 bytes, in GiB
    assert "hf" not in record

    # One device, beside transformers at 4 rows (half the FLOPs, 4 x 16 tokens).
    record = bt.main(argv + ["--compare_hf"])
    assert record["mesh"] == [1, 1, 1]
    assert record["tokens_per_s"] == 128000.0
    assert record["tflops_per_s_per_device"] == round(flops / 1e-3 / 1e12, 4) == 0.3256
    assert record["mfu"] == round(flops / (1e-3 * 2e12), 4) == 0.1628
    hf = record["hf"]
    assert (hf["batch"], hf["step_time_s"]) == (4, 4e-3)
    assert hf["tokens_per_s"] == 4 * 16 / 4e-3 == 16000.0
    assert hf["tflops_per_s_per_device"] == round(flops / 2 / 4e-3 / 1e12, 4) == 0.0407
    assert hf["mfu"] == round(flops / 2 / (4e-3 * 2e12), 4) == 0.0203
    # Tokens per second, not step times: transformers' steps hold half the rows.
    assert record["speedup_vs_hf"] == record["speedup_vs_hf_paired"] == 8.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "tiny-blom"], "error: unknown model preset 'tiny-blom'; known: "),
        (
            ["--mesh", "3,1,1"],
            "error: MESH_SHAPE (3, 1, 1) needs 3 devices but 8 are available; use -1 for one "
            "axis to take the rest",
        ),
        (
            ["--mesh", "data"],
            "python -m benchmarks.train_step: error: argument --mesh: 'data' is not "
            "comma-separated data,fsdp,tensor sizes (e.g. -1,1,1)",
        ),
        (
            ["--seq", "-8"],
            "python -m benchmarks.train_step: error: argument --seq: '-8' is not a positive "
            "integer",
        ),
        (
            ["--batch", "0"],
            "python -m benchmarks.train_step: error: argument --batch: '0' is not a positive "
            "integer",
        ),
        (
            ["--steps", "0"],
            "python -m benchmarks.train_step: error: argument --steps: '0' is not a positive "
            "integer",
        ),
        (
            ["--batch", "4"],
            "error: --batch 4 does not divide over the mesh's data x fsdp = 8 (mesh [8, 1, 1])",
        ),
        (
            ["--microbatches", "3"],
            "error: --batch 8 is not divisible by --microbatches 3",
        ),
        (
            ["--loss_chunk", "7"],
            "error: --loss_chunk 7 must divide --seq 512 and be smaller (0: unchunked)",
        ),
        (
            ["--loss_chunk", "512"],
            "error: --loss_chunk 512 must divide --seq 512 and be smaller (0: unchunked)",
        ),
        (
            ["--answer_fraction", "0"],
            "python -m benchmarks.train_step: error: argument --answer_fraction: '0': use a "
            "number in (0, 1]",
        ),
        (["--override", "nope=1"], "error: --override nope=1: ModelConfig has no field 'nope'"),
        (
            ["--logits_dtype", "bf16"],
            "error: ModelConfig.logits_dtype='bf16': must be one of ('float32', 'bfloat16')",
        ),
        (
            ["--override", "remat_policy=full"],
            "error: --override remat_policy=full: the value is not JSON (Expecting value); "
            "strings need quotes",
        ),
        (
            ["--compile_only", "--compare_hf"],
            "error: --compile_only runs nothing: drop --compare_hf",
        ),
        (
            ["--compile_only", "--profile", "/tmp/trace"],
            "error: --compile_only runs nothing: drop --profile",
        ),
        (["--compare_hf"], COMPARE_HF_MESH),
    ],
)
def test_train_step_user_errors_are_one_line(capsys, results, argv, message):
    assert_one_line_error(capsys, bt.main, argv, message)


def test_train_step_records_no_row_when_the_step_fails(capsys, results, monkeypatch):
    class Broken:
        def __init__(self, *args):
            raise RuntimeError("out of memory")

    monkeypatch.setattr(bt, "JaxRunner", Broken)
    with pytest.raises(SystemExit, match="^JAX train step failed: RuntimeError: out of memory$"):
        bt.main(["--preset", "tiny-bloom", "--seq", "16", "--rounds", "1", "--steps", "1"])
    printed = capsys.readouterr()
    assert '"error": "RuntimeError: out of memory"' in printed.out
    # Progress on stderr says how far a run got (gpu_check keeps it in the row's log).
    progress = [line.split("] ", 1) for line in printed.err.splitlines()]
    assert all(stamp.startswith("[benchmark +") and stamp.endswith("s") for stamp, _ in progress)
    assert [m for _, m in progress] == ["jax: building", "jax: failed: RuntimeError: out of memory"]
