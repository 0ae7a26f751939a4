"""What every benchmark shares: device description, peak FLOP/s, memory, RESULTS.md rows,
and option checking (one `error:` line and exit status 2 for bad input).

`benchmarks/RESULTS.md` is append-only: each measurement adds one dated row
(command, device, library versions, numbers). Needs only the standard library
and jax (torch / transformers versions are added when they are importable).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Mapping

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"

RESULTS_HEADER = """# Benchmark results

Append-only: every run of `python -m benchmarks.<name>` adds one row (rows are never
edited). `numbers` are the benchmark's JSON fields; `*_per_s` are throughputs, `ratio` or
`speedup_vs_hf` compare with PyTorch/transformers measured in the same process. MFU
uses the FLOP count in each benchmark's module docstring and the bf16 dense peak below.

| date (UTC) | command | device | versions | numbers |
|---|---|---|---|---|
"""

# Dense bf16 peak FLOP/s per device (vendor data sheets, no sparsity). MFU is always
# measured against this peak, whatever the compute dtype. Matched in order against
# `device.device_kind`, lower-cased; the first key contained in it wins.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),  # before "h100": the NVL card's kind contains it too
    ("h100", 989e12),  # SXM / HBM3 (the "NVIDIA H100 80GB HBM3" kind)
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e reports its kind as "TPU v5 lite"
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports its kind as "TPU v5"
    ("tpu v6 lite", 918e12),  # v6e (Trillium) reports its kind as "TPU v6 lite"
)


def peak_flops_per_device(device: jax.Device) -> float | None:
    """Dense bf16 peak FLOP/s of `device`, or None (CPU, unknown accelerator)."""
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    for key, peak in PEAK_FLOPS:
        if key in kind:
            return peak
    return None


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description() -> str:
    """E.g. "1x NVIDIA H100 80GB HBM3" or "CPU: 2-core x86_64 (Intel(R) Xeon(R) Processor)"."""
    devices = jax.devices()
    if devices[0].platform == "cpu":
        return f"CPU: {os.cpu_count()}-core {platform.machine()} ({_cpu_model()})"
    return f"{len(devices)}x {devices[0].device_kind}"


def gib(num_bytes: int | None) -> float | None:
    """Bytes as GiB (2**30 bytes), 3 decimals: the unit of every `*_gb` field the
    benchmarks report (the key names predate the unit being stated)."""
    return None if num_bytes is None else round(num_bytes / 2**30, 3)


def peak_memory_bytes(device: jax.Device) -> int | None:
    """Peak bytes allocated on `device` so far (None where the backend does not say: CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    if not stats:
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else int(peak)


def versions() -> dict[str, str]:
    """Versions of the libraries a benchmark ran with (torch stack only if importable)."""
    import flax

    out = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
    for name in ("optax", "torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out


def command_line(module: str) -> str:
    """The command that reproduces this run: `python -m <module> <args>`."""
    return " ".join(["python", "-m", module, shlex.join(sys.argv[1:])]).strip()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _numbers(record: Mapping) -> str:
    parts = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            value = _numbers({f"{key}.{k}": v for k, v in value.items()})
            parts.append(value)
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return "; ".join(parts)


def append_result(command: str, record: Mapping, path: pathlib.Path | None = None) -> None:
    """Appends one dated row for `record` to RESULTS.md (created with its header)."""
    path = RESULTS if path is None else pathlib.Path(path)
    if not path.exists():
        path.write_text(RESULTS_HEADER)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    row = [date, f"`{command}`", device_description(), vers, _numbers(record)]
    with path.open("a") as f:
        f.write("| " + " | ".join(_cell(c) for c in row) + " |\n")


# ----------------------------------------------------------------------------- user errors


class BenchmarkError(ValueError):
    """Options that cannot work together (reported as one line, exit status 2)."""


def number_arg(convert, ok, why: str):
    """argparse type: `convert(text)` if it parses and `ok(value)`; otherwise the error
    `why.format(text=text)` (e.g. "{text!r} is not a positive integer")."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(why.format(text=text))
        return value

    return parse


# A zero batch or step count measures nothing.
positive_int = number_arg(int, lambda v: v >= 1, "{text!r} is not a positive integer")


def mesh_shape(text: str) -> tuple[int, ...]:
    """argparse type: "data,fsdp,tensor" sizes as ints (MeshConfig checks the values)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not comma-separated data,fsdp,tensor sizes (e.g. -1,1,1)"
        ) from None


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's "your input is wrong" exceptions (`launch.user_errors`, which needs
    neither gin nor TensorFlow: the GPU machines have neither, and a typo must still be
    one line there) plus the benchmarks' own, imported only when one is raised."""
    from ecomgpt_jax import launch
    from ecomgpt_jax.decoding import DecodeConfigError

    return (BenchmarkError, DecodeConfigError, *launch.user_errors())


def check_batch_over_mesh(batch: int, mesh) -> None:
    """BenchmarkError unless `batch` rows split evenly over the mesh's batch axes."""
    from ecomgpt_jax import partitioning

    divisor = partitioning.batch_divisor(mesh)
    if batch % divisor:
        raise BenchmarkError(
            f"--batch {batch} does not divide over the mesh's data x fsdp = {divisor} "
            f"(mesh {list(mesh.devices.shape)})"
        )


def check_compare_hf_mesh(mesh) -> None:
    """BenchmarkError unless the mesh is one device: transformers runs on one device, so
    a ratio against a larger mesh's throughput would credit ours with its device count."""
    if mesh.size != 1:
        raise BenchmarkError(
            f"--compare_hf needs a 1-device mesh (transformers runs on one device), got mesh "
            f"{list(mesh.devices.shape)} of {mesh.size} devices; expose one device (e.g. "
            "CUDA_VISIBLE_DEVICES=0)"
        )


def exit_on_user_error():
    """A user error inside becomes one `error: ...` line on stderr and exit status 2
    (`launch.exit_on_user_error` with the benchmarks' own errors too)."""
    from ecomgpt_jax import launch

    return launch.exit_on_user_error(user_errors)


_START = time.perf_counter()


def first_line(e: BaseException) -> str:
    """An error as one short line for a record: type, message's first line."""
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300]


def progress(message: str) -> None:
    """One `[benchmark +12.3s] message` line on stderr: where a run that is stopped by a
    time limit got to (the JSON result is printed only at the end)."""
    elapsed = time.perf_counter() - _START
    print(f"[benchmark +{elapsed:.1f}s] {message}", file=sys.stderr, flush=True)


def emit(record: Mapping) -> None:
    """Prints one JSON line (the machine-readable result)."""
    print(json.dumps(record, sort_keys=False), flush=True)
