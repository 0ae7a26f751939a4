"""Run the notebooks top to bottom and save them with their outputs (so GitHub shows them).

    python notebooks/execute.py                                  # every notebook, in place
    python notebooks/execute.py notebooks/quickstart.ipynb       # one of them

Each notebook runs in a fresh `python3` kernel of the interpreter running this script (a
kernel spec written to a temporary folder, so no other installed "python3" kernel is
picked up), from the repository root (or `execute`'s `cwd`), on the CPU, with the data
root and XLA device flags of the calling shell removed: the saved outputs are what a fresh
CPU machine shows.
`tests/test_notebooks.py` executes the notebooks through `execute` too.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = (
    ROOT / "notebooks" / "quickstart.ipynb",
    ROOT / "notebooks" / "finetune_bloomz_tpu.ipynb",
)
# Removed from the kernel's environment: the notebooks choose their data and devices.
DROPPED_ENV = ("ECOMGPT_DATA_DIR", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
CELL_TIMEOUT_S = 900


def kernel_env() -> dict[str, str]:
    """The calling environment without DROPPED_ENV, on the CPU, TensorFlow logs quiet."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return env


def _write_kernel_spec(folder: pathlib.Path) -> None:
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3",
        "language": "python",
    }
    (folder / "python3").mkdir(parents=True)
    (folder / "python3" / "kernel.json").write_text(json.dumps(spec))


def execute(
    path: str | os.PathLike, timeout: int = CELL_TIMEOUT_S, cwd: str | os.PathLike = ROOT
) -> nbformat.NotebookNode:
    """Executes the notebook at `path` from `cwd` and returns it with outputs (the file is
    unchanged). The notebooks work in the repository at or above `cwd` (its runs/ folder).

    Raises nbclient.exceptions.CellExecutionError naming the failing cell.
    """
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        _write_kernel_spec(pathlib.Path(tmp))
        specs = KernelSpecManager(kernel_dirs=[tmp])
        km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,  # no timestamps: re-executing changes only real outputs
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute(env=kernel_env())
    return nb


def main(argv: list[str]) -> int:
    paths = [pathlib.Path(p).resolve() for p in argv] or list(NOTEBOOKS)
    for path in paths:
        start = time.time()
        nb = execute(path)
        nbformat.write(nb, path)
        print(f"{path.relative_to(ROOT)}: executed in {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
