"""benchmarks/gpu_check.sh: its rows, fallbacks and table (with a stub interpreter), its
argument errors and help."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks import train_step as bt

SCRIPT = pathlib.Path(bt.__file__).with_name("gpu_check.sh")

# How a train_step row fails, by "PRESET ATTENTION" (+ " remat" with --remat): (exit
# status, last log line). By default bloomz-1b1 without remat runs out of memory, as the
# preset's step did on an H100; STUB_FAIL (JSON) replaces the default.
OOM = {"bloomz-1b1 cudnn": [1, "RESOURCE_EXHAUSTED: Out of memory allocating 30.5GiB"]}

_STUB = """#!{python}
# Stands in for the GPU's python in gpu_check.sh: benchmark modules print canned
# records (failing as STUB_FAIL says); anything else is real python.
import json, os, sys

args = sys.argv[1:]
if args[:1] != ["-m"]:
    os.execv({python!r}, [{python!r}] + args)
with open({calls!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if args[1] == "pytest":
    with open({calls!r}, "a") as f:
        f.write("JAX_PLATFORMS=" + os.environ.get("JAX_PLATFORMS", "") + "\\n")
    print(os.environ.get("STUB_PYTEST_SUMMARY", "3 passed in 30.00s"))
    sys.exit(0)
preset = args[args.index("--preset") + 1]
if args[1] == "benchmarks.decode":
    # The keys benchmarks/decode.py prints with --compare_hf (values made up).
    for method, beams in (("greedy", 1), ("beam", 4)):
        rates = dict(seconds_per_batch=1.0, sequences_per_s=2.0, new_tokens_per_s=128.0)
        print(json.dumps({{
            "benchmark": "decode", "preset": preset, "method": method, "num_beams": beams,
            "batch": 16, "prompt_len": 256, "new_tokens": 64, "dtype": "bfloat16",
            "attention_impl": "xla", "mesh": {{"data": 1, "fsdp": 1, "tensor": 1}},
            "params": 559214592, "first_call_s": 20.0, "seconds_per_batch": 0.4,
            "sequences_per_s": 40.0, "new_tokens_per_s": 2560.0, "peak_memory_gb": 5.0,
            "hf": dict(attn="eager", batch=2, **rates),
            "ours_at_hf_batch": dict(rates, batch=2, seconds_per_batch=0.2, sequences_per_s=10.0),
            "speedup_vs_hf": 20.0, "speedup_vs_hf_same_batch": 5.0,
        }}))
    sys.exit(0)
attention = args[args.index("--attention_impl") + 1]
key = f"{{preset}} {{attention}}" + (" remat" if "--remat" in args else "")
fail = json.loads(os.environ.get("STUB_FAIL", {oom!r})).get(key)
if fail:
    print("[benchmark +1.0s] transformers: batch 8 ran out of memory, halving", file=sys.stderr)
    print(fail[1], file=sys.stderr)
    sys.exit(fail[0])
answers = float(args[args.index("--answer_fraction") + 1]) if "--answer_fraction" in args else 1.0
record = dict(bench="train_step", preset=preset, batch=8, seq=2048, tokens_per_s=50000.0,
              mfu=0.3, peak_memory_gb=60.0, answer_fraction=answers)
if "--compare_hf" in args:
    record.update(hf=dict(tokens_per_s=25000.0), speedup_vs_hf=2.0)
print(json.dumps(record))
"""


def _run_with_stub(tmp_path, *flags):
    """gpu_check.sh with `_STUB` as its python: (completed process, calls file)."""
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(_STUB.format(python=sys.executable, calls=str(calls), oom=json.dumps(OOM)))
    stub.chmod(0o755)
    args = ["--python", str(stub), "--log_dir", str(tmp_path / "logs"), *flags]
    run = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    return run, calls


def test_gpu_check_runs_every_row_with_fallbacks_and_prints_the_table(tmp_path):
    """benchmarks/gpu_check.sh with a stub interpreter: the attention tests, then the
    rows in order; bloomz-1b1 is retried with remat after a failure, the answer-only
    bloomz-1b1 row reuses the remat that worked, the XLA-attention row runs without
    transformers, the profiled row last, and the summary table has one line per record."""
    out = tmp_path / "out"
    run, calls = _run_with_stub(tmp_path, "--out", str(out))
    assert run.returncode == 0, run.stderr
    invoked = [line.split() for line in calls.read_text().splitlines()]
    # First the cuDNN attention tests (pytest is importable here), then the benchmarks.
    tests = ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_attention.py"]
    assert invoked.pop(0) == [*tests, "-k", "cudnn"]
    assert invoked.pop(0) == ["JAX_PLATFORMS=cuda"]  # else the tests' set-up picks the CPU
    assert "--- attention_tests ok" in run.stdout and "3 passed in 30.00s" in run.stdout
    assert "distrust" not in run.stdout
    assert run.stdout.rstrip().endswith("cuDNN attention tests: 3 passed in 30.00s")
    checks = [(a[1], a[a.index("--preset") + 1]) for a in invoked]
    assert checks == [
        ("benchmarks.train_step", "bloom-560m"),
        ("benchmarks.train_step", "bloomz-1b1"),
        ("benchmarks.train_step", "bloomz-1b1"),
        ("benchmarks.decode", "bloom-560m"),
        ("benchmarks.decode", "bloomz-1b1"),
        ("benchmarks.train_step", "bloomz-1b1"),
        ("benchmarks.train_step", "bloom-560m"),
        ("benchmarks.train_step", "bloom-560m"),
        ("benchmarks.train_step", "bloom-560m"),
    ]
    remat = [a[a.index("--remat") + 1] if "--remat" in a else None for a in invoked]
    assert remat[1] is None and remat[2] == "full" and remat[5] == "full"
    assert invoked[3] == invoked[4][:-1] + ["bloom-560m"]  # the same decode settings
    assert "--compare_hf" in invoked[3] and "--compare_hf" in invoked[5]
    assert invoked[5][invoked[5].index("--answer_fraction") + 1] == "0.1"
    assert invoked[0][invoked[0].index("--attention_impl") + 1] == "cudnn"
    assert invoked[6][invoked[6].index("--attention_impl") + 1] == "xla"
    assert "--compare_hf" in invoked[0] and "--compare_hf" not in invoked[6]
    assert invoked[7][invoked[7].index("--profile") + 1] == str(tmp_path / "logs" / "trace")
    assert "--no_record" in invoked[7] and "--compare_hf" not in invoked[7]
    assert invoked[8][invoked[8].index("--logits_dtype") + 1] == "bfloat16"
    assert "--compare_hf" not in invoked[8] and "--no_record" not in invoked[8]
    assert "--- train_bloomz_1b1 FAILED (exit 1" in run.stdout
    assert "RESOURCE_EXHAUSTED" in run.stdout  # the failed row's last log lines
    # Well inside the default 290 s budget each row gets its own limit.
    assert "=== train_bloom_560m (timeout 150s)" in run.stdout
    assert "=== decode_bloom_560m (timeout 120s)" in run.stdout
    table = run.stdout.split("=== summary")[1].splitlines()
    rows = [line.split() for line in table if line.startswith(("train_", "decode_", "profile_"))]
    assert [r[0] for r in rows] == [
        "train_bloom_560m",
        "train_bloomz_1b1_remat",
        "decode_bloom_560m",
        "decode_bloom_560m",
        "decode_bloomz_1b1",
        "decode_bloomz_1b1",
        "train_bloomz_1b1_answers",
        "train_bloom_560m_xla",
        "profile_bloom_560m",
        "train_bloom_560m_bf16_logits",
    ]
    assert table[1].split()[-2:] == ["mem", "GiB"]
    # check, what (3 words), ours, transformers, ratio, MFU, memory
    assert rows[0][1:] == ["bloom-560m", "b8x2048", "tok/s", "50,000", "25,000", "2", "0.3", "60"]
    assert rows[2][1:10] == ["bloom-560m", "greedy", "b16", "seq/s", "40", "2", "20", "-", "5"]
    # Transformers ran at batch 2: the ratio with ours at batch 2 is named beside.
    assert " ".join(rows[2][10:]) == "(hf at b2; x hf with ours at b2: 5)"
    assert rows[4][1:4] == ["bloomz-1b1", "greedy", "b16"]
    assert rows[6][1:4] == ["bloomz-1b1", "b8x2048a0.1", "tok/s"]
    assert rows[7][4:7] == ["50,000", "-", "-"]  # no transformers in the XLA row
    copied = {p.name for p in out.iterdir()}
    assert {"results.jsonl", "train_bloom_560m.log", "train_bloomz_1b1.log"} <= copied


def _rows_run(calls) -> list[tuple[str, str, bool, bool]]:
    """(preset, attention, --remat full, --compare_hf) of each benchmark the stub ran."""
    invoked = [line.split() for line in calls.read_text().splitlines()]
    return [
        (
            a[a.index("--preset") + 1],
            a[a.index("--attention_impl") + 1] if "--attention_impl" in a else "-",
            "--remat" in a,
            "--compare_hf" in a,
        )
        for a in invoked
        if a[:2] in (["-m", "benchmarks.train_step"], ["-m", "benchmarks.decode"])
    ]


def test_gpu_check_falls_back_only_after_a_failure_that_is_not_a_timeout(tmp_path, monkeypatch):
    """A row killed by its time limit (exit 124, or 137 after the grace) is reported as
    timed out: bloom-560m is not rerun with XLA attention and transformers (its XLA row
    comes later, without transformers) and bloomz-1b1 is not rerun with remat, nor does
    the answer-only row inherit remat, even though the log has transformers' own "ran
    out of memory, halving" lines."""
    stall = "[benchmark +149.0s] jax: round 1: 0.9 s/step"
    fail = {"bloom-560m cudnn": [137, stall], "bloomz-1b1 cudnn": [124, stall]}
    monkeypatch.setenv("STUB_FAIL", json.dumps(fail))
    run, calls = _run_with_stub(tmp_path)
    assert run.returncode == 0, run.stderr
    assert _rows_run(calls) == [
        ("bloom-560m", "cudnn", False, True),
        ("bloomz-1b1", "cudnn", False, True),
        ("bloom-560m", "-", False, True),  # decode
        ("bloomz-1b1", "-", False, True),  # decode
        ("bloomz-1b1", "cudnn", False, True),  # answer-only, no remat
        ("bloom-560m", "xla", False, False),
        ("bloom-560m", "cudnn", False, False),  # profiled
        ("bloom-560m", "cudnn", False, False),  # bf16 logits
    ]
    assert "--- train_bloom_560m timed out (exit 137 after" in run.stdout
    assert "--- train_bloomz_1b1 timed out (exit 124 after" in run.stdout
    assert "FAILED" not in run.stdout.split("=== train_bloom_560m ")[1].split("=== decode")[0]


def test_gpu_check_reruns_with_xla_attention_or_remat_only_for_the_failure_it_fixes(
    tmp_path, monkeypatch
):
    """cuDNN attention failing (not by time) reruns bloom-560m with XLA attention and
    transformers, and the later XLA row is dropped; bloomz-1b1 failing without running
    out of memory is not rerun with remat."""
    fail = {
        "bloom-560m cudnn": [1, "XlaRuntimeError: INTERNAL: cuDNN graph is not supported"],
        "bloomz-1b1 cudnn": [1, "ValueError: something else"],
    }
    monkeypatch.setenv("STUB_FAIL", json.dumps(fail))
    run, calls = _run_with_stub(tmp_path)
    assert run.returncode == 0, run.stderr
    assert _rows_run(calls) == [
        ("bloom-560m", "cudnn", False, True),
        ("bloom-560m", "xla", False, True),  # the fallback, beside transformers
        ("bloomz-1b1", "cudnn", False, True),
        ("bloom-560m", "-", False, True),  # decode
        ("bloomz-1b1", "-", False, True),  # decode
        ("bloomz-1b1", "cudnn", False, True),  # answer-only, no remat
        ("bloom-560m", "cudnn", False, False),  # profiled
        ("bloom-560m", "cudnn", False, False),  # bf16 logits
    ]
    assert "--- train_bloom_560m FAILED (exit 1 after" in run.stdout
    assert "--- train_bloomz_1b1 FAILED (exit 1 after" in run.stdout
    assert "train_bloomz_1b1_remat" not in run.stdout


def test_gpu_check_rows_end_within_the_budget(tmp_path):
    """Each row's limit is clipped to what is left of --budget_s less the 5 s grace that
    `timeout -k 5` may add, so the last row cannot outlast the budget."""
    run, _ = _run_with_stub(tmp_path, "--budget_s", "100")
    assert run.returncode == 0, run.stderr
    limits = [int(x) for x in re.findall(r"^=== \w+ \(timeout (\d+)s\)", run.stdout, re.M)]
    # The attention tests (limit 120) start with ~100 s left: clipped to at most 95.
    assert 60 <= limits[0] <= 95 and len(limits) == 10
    assert max(limits) <= 95


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out"], "gpu_check.sh: --out needs a value"),
        (
            ["--budget_s", "5m"],
            "gpu_check.sh: --budget_s must be a whole number of seconds, got 5m",
        ),
        (["--gpu"], "gpu_check.sh: unknown argument --gpu (see --help)"),
    ],
)
def test_gpu_check_bad_arguments_stop_before_anything_runs(tmp_path, args, message):
    run = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    assert (run.returncode, run.stderr, run.stdout) == (2, message + "\n", "")


def test_gpu_check_help_is_its_header():
    run = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    assert run.stdout.startswith("# One-command GPU check")
    assert "--budget_s S]" in run.stdout and "set -u" not in run.stdout


def test_gpu_check_warns_when_the_attention_tests_skip_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_PYTEST_SUMMARY", "3 skipped, 29 deselected in 1.00s")
    run, _ = _run_with_stub(tmp_path, "--budget_s", "60")
    assert run.returncode == 0, run.stderr
    assert "!!! the cuDNN attention tests did not all pass on the GPU" in run.stdout
    assert "=== train_bloom_560m" in run.stdout  # the benchmarks still run
    last = run.stdout.rstrip().splitlines()[-1]
    assert last == "cuDNN attention tests: NOT ALL PASSED: 3 skipped, 29 deselected in 1.00s"
