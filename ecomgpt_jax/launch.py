"""What the `python -m` entry points (train, eval) share: flags, gin parsing, multi-host.

T5X conventions: `--gin_file` (repeatable), `--gin.NAME=VALUE` (rewritten to
`--gin_bindings="NAME = VALUE"`), `--gin_search_paths` (comma-separated; the
repository's gin_configs/ is always searched). Multi-host: `--multihost`
(auto-detection on Cloud TPU VMs, SLURM, Open MPI) or explicit
`--coordinator_address=host:port --num_processes=N --process_id=i`.

Gin is imported here and in the entry points only; the library takes dataclasses.
"""

from __future__ import annotations

import logging
import pathlib
import tokenize

import gin
from absl import flags

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin_configs"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the shared flags once, so train and eval can live in one process (tests)."""

    def define(kind, name, default, text):
        if name not in FLAGS:
            getattr(flags, kind)(name, default, text)

    define("DEFINE_multi_string", "gin_file", [], "Gin config file(s), applied in order.")
    define("DEFINE_multi_string", "gin_bindings", [], "Gin bindings, e.g. 'TRAIN_STEPS = 10'.")
    define("DEFINE_list", "gin_search_paths", [], "Extra folders searched for gin files.")
    define("DEFINE_bool", "multihost", False, "jax.distributed.initialize() with auto-detection.")
    define("DEFINE_string", "coordinator_address", None, "host:port of process 0 (GPU clusters).")
    define("DEFINE_integer", "num_processes", None, "Number of processes.")
    define("DEFINE_integer", "process_id", None, "This process's index.")


def rewrite_gin_args(argv: list[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X convention)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin.") :].split("=", 1)
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(arg)
    return out


def register_configurables(classes: dict[str, tuple[type, str]]) -> dict:
    """Makes library dataclasses gin-configurable as `module.Name` (idempotent).

    Args:
      classes: gin name -> (class, gin module name).

    Returns:
      gin name -> the configurable (call it to get the class with gin's bindings applied).
    """
    registered = {}
    for name, (cls, module) in classes.items():
        try:  # a second call (tests run several jobs in one process) finds the first one
            registered[name] = gin.get_configurable(f"{module}.{name}")
        except ValueError:
            registered[name] = gin.external_configurable(cls, name=name, module=module)
    return registered


def _quiet_gin_package_lookups(record) -> bool:
    # gin looks every include up as a Python package resource too and logs each miss
    # at ERROR ("Path not found: models/tiny_bloom.gin") before finding the file.
    return not (record.filename == "resource_reader.py" and "Path not found" in record.msg)


def parse_gin(
    files, bindings, search_paths, error: type[Exception], example: str, finalize: bool = False
) -> None:
    """Parses gin files and bindings; any problem raises `error` with one line.

    Args:
      files: gin files, applied in order.
      bindings: "NAME = VALUE" strings, applied after the files.
      search_paths: extra folders for gin files and their includes.
      error: the entry point's user-error class.
      example: a gin file to name when none was given.
      finalize: lock the config; this also reports unset REQUIRED macros now, as one
        line, instead of later from deep inside the job.
    """
    logging.getLogger().addFilter(_quiet_gin_package_lookups)  # gin logs via the root logger
    gin.clear_config()
    for path in [*search_paths, str(REPO_GIN_DIR), str(REPO_GIN_DIR.parent)]:
        gin.add_config_file_search_path(path)
    if not files:
        raise error(f"pass at least one --gin_file (e.g. {example})")
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=finalize)
    # tokenize.TokenError: an unclosed bracket at the end of a gin file.
    except (OSError, ValueError, SyntaxError, tokenize.TokenError) as e:
        raise error(f"gin config: {str(e).strip().splitlines()[0]}") from None


def init_distributed() -> None:
    """`jax.distributed.initialize()` when the flags ask for several processes."""
    import jax

    if FLAGS.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif FLAGS.multihost:
        jax.distributed.initialize()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user's input is wrong": shown as one line, not a trace.

    Imported lazily so that `--help` does not pay for jax and the models.
    """
    from ecomgpt_jax import checkpointing, partitioning
    from ecomgpt_jax.ecominstruct.reader import DataError
    from ecomgpt_jax.models.config import ConfigError
    from ecomgpt_jax.models.hf_io import CheckpointFormatError

    return (
        partitioning.MeshError,
        DataError,
        ConfigError,
        CheckpointFormatError,
        checkpointing.CheckpointError,
        FileNotFoundError,
    )
