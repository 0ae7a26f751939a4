"""benchmarks/report.py: what every benchmark shares: the peak FLOP/s table, RESULTS.md
rows, and user errors as one line without gin, TensorFlow or SeqIO."""

import os
import pathlib
import subprocess
import sys
import types

import pytest

from benchmarks import report


@pytest.mark.parametrize(
    "platform,kind,peak",
    [
        ("gpu", "NVIDIA H100 80GB HBM3", 989e12),
        ("gpu", "NVIDIA H100 PCIe", 756e12),
        ("gpu", "NVIDIA H100 NVL", 835e12),  # not the "h100" (SXM) entry after it
        ("gpu", "NVIDIA H200", 989e12),
        ("gpu", "NVIDIA A100-SXM4-80GB", 312e12),
        ("tpu", "TPU v4", 275e12),
        ("tpu", "TPU v5 lite", 197e12),
        ("tpu", "TPU v5", 459e12),
        ("tpu", "TPU v6 lite", 918e12),
        ("gpu", "Some Future GPU", None),
        ("cpu", "cpu", None),
    ],
)
def test_peak_flops_table(platform, kind, peak):
    device = types.SimpleNamespace(platform=platform, device_kind=kind)
    assert report.peak_flops_per_device(device) == peak


def test_append_result_writes_header_once_and_escapes(tmp_path):
    path = tmp_path / "RESULTS.md"
    report.append_result("python -m x --a 'b|c'", {"n": 1.23456, "hf": {"t": 2}}, path)
    report.append_result("python -m y", {"n": 2}, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# Benchmark results"
    rows = [line for line in lines if line.startswith("| 20")]
    assert len(rows) == 2
    assert "b\\|c" in rows[0] and "n=1.235; hf.t=2" in rows[0]
    assert path.read_text().count("| date (UTC) |") == 1


def test_user_errors_are_one_line_without_gin_tensorflow_or_seqio():
    """The GPU machines have no gin, TensorFlow or SeqIO: there the benchmarks import,
    and a user error (a mistyped preset, a mesh that does not fit) is still one line and
    exit status 2, not a ModuleNotFoundError from collecting the project's errors."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "seqio", "gin"):
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
sys.meta_path.insert(0, Block())
from benchmarks import decode, hf_baselines, op_profile, report, train_step
for main, argv in (
    (train_step.main, ["--preset", "tiny-blom"]),
    (decode.main, ["--preset", "tiny-bloom", "--mesh", "3,1,1"]),
):
    try:
        main(argv)
    except SystemExit as e:
        print(e.code)
print(sorted({"gin", "tensorflow", "seqio"} & set(sys.modules)))
"""
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, env=os.environ
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["2", "2", "[]"]
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[benchmark")]
    assert len(errors) == 2, proc.stderr[-2000:]
    assert errors[0].startswith("error: unknown model preset 'tiny-blom'; known: ")
    assert errors[1] == (
        "error: MESH_SHAPE (3, 1, 1) needs 3 devices but 8 are available; use -1 for one axis "
        "to take the rest"
    )
