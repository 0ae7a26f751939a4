"""What the `python -m` entry points (train, eval) share: flags, gin set-up, multi-host.

T5X conventions: `--gin_file` (repeatable), `--gin.NAME=VALUE` (rewritten to
`--gin_bindings="NAME = VALUE"`), `--gin_search_paths` (comma-separated; the
repository's gin_configs/ is always searched). Multi-host: `--multihost`
(auto-detection on Cloud TPU VMs, SLURM, Open MPI) or explicit
`--coordinator_address=host:port --num_processes=N --process_id=i`.

Gin is imported here (when configurables are registered: the benchmarks use this
module's errors on machines without gin), in `gin_parsing` and in the entry points only;
the library takes dataclasses.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import flags

FLAGS = flags.FLAGS
USAGE_EXIT_CODE = 2  # bad input: one "error: ..." line on stderr, in every entry point
# Ctrl-C saved and stopped: 130 as for any interrupted command, so that `train && eval`
# goes no further (SIGTERM, a preemption, exits 0 for the scheduler to restart the job).
INTERRUPTED_EXIT_CODE = 130


def status_of(run: Callable[[], int]) -> int:
    """run()'s exit status; a Ctrl-C gives "interrupted" on stderr and 130, not a trace
    from wherever it landed (score and compare, whose writes come last)."""
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


class InterruptWatch:
    """Within it, a Ctrl-C raises KeyboardInterrupt as by default and is also remembered:
    Python drops one raised inside a garbage-collection callback or a __del__ (jax has
    one; imports run it often) with a printed trace and carries on, so a Ctrl-C in the
    seconds of set-up could go unheeded. `check()` raises it again, and the dropped
    one's trace is not printed (check's caller says "interrupted" in one line)."""

    def __init__(self):
        self.seen = False
        self._previous = None
        self._active = False
        self._hook = sys.unraisablehook

    def __enter__(self) -> InterruptWatch:
        # An ignored SIGINT (nohup, `cmd &` in a script) stays ignored; ValueError: not
        # the main thread (a test runner's).
        if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            with contextlib.suppress(ValueError):
                self._previous = signal.signal(signal.SIGINT, self._handle)
        self._active, self._hook = True, sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, unraisable) -> None:
        if self._active and isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.seen = True  # also where the handler could not be installed
        else:
            self._hook(unraisable)

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        self._active = False  # stays in a chain of hooks installed after it, inert
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._hook


def exit_usage(message: str) -> NoReturn:
    """`error: message` on stderr, exit status USAGE_EXIT_CODE."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_CODE)


@contextlib.contextmanager
def exit_on_user_error(errors: Callable[[], tuple[type[BaseException], ...]]):
    """An exception inside of a type `errors()` names (called only then: the list imports
    the library) becomes its first line via `exit_usage`, without a trace."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, errors()):
            raise
        text = str(e).strip()
        exit_usage(text.splitlines()[0] if text else repr(e))


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


# absl's help flags (app.define_help_flags), with one dash or two: each prints its text
# and exits 1. absl knows no -h (an unknown flag); it is --help here, as in most commands.
HELP_FLAGS = (
    "-?",
    *(d + f for d in ("-", "--") for f in ("help", "helpshort", "helpfull", "helpxml")),
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run(flags_parser=...)`, with a bad flag (unknown,
    mistyped, a bad value) as one "error: ..." line and exit status 2, as every other bad
    input here (absl prints two lines and exits 1), and asked-for help exiting 0."""
    end = argv.index("--") if "--" in argv else len(argv)
    options = ["--help" if arg == "-h" else arg for arg in argv[1:end]]
    try:
        return FLAGS([*argv[:1], *options, *argv[end:]])
    except flags.Error as e:
        exit_usage(f"{e} (--helpfull lists the flags)")
    except SystemExit as e:
        if e.code == 1 and any(arg.split("=", 1)[0] in HELP_FLAGS for arg in options):
            raise SystemExit(0) from None
        raise


def quiet_logs() -> None:
    """absl logs at WARNING unless --verbosity is given: orbax logs every file it reads or
    writes at INFO. Also orbax_failures.quiet_logs: its errors without traces, without its
    warning that a params item has no _CHECKPOINT_METADATA."""
    from absl import logging

    from ecomgpt_jax import orbax_failures  # jax and orbax: entry points that log them

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    orbax_failures.quiet_logs()


def rewrite_gin_args(argv: list[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X convention).

    Exits (status 2, one line on stderr, as every entry point's bad input) for
    `--gin.NAME VALUE` (a space, not "="), which absl would report as an unknown flag
    `gin.NAME`.
    """
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" not in arg:
            exit_usage(f"{arg}: write the binding as {arg}=VALUE (one argument)")
        if arg.startswith("--gin."):
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
    import gin

    registered = {}
    for name, (cls, module) in classes.items():
        try:  # a second call (tests run several jobs in one process) finds the first one
            registered[name] = gin.get_configurable(f"{module}.{name}")
        except ValueError:
            registered[name] = gin.external_configurable(cls, name=name, module=module)
    return registered


class FlagError(Exception):
    """A command-line flag the entry points cannot use; shown as one line."""


def distributed_kwargs(
    multihost: bool, coordinator_address: str | None, num_processes, process_id
) -> dict | None:
    """jax.distributed.initialize's arguments for the flags (None: one process).

    Raises FlagError for flags that cannot work, where jax would raise from deep
    inside, wait for processes that never come, or run a single process unasked.
    """
    if num_processes is not None and num_processes < 1:
        raise FlagError(f"--num_processes {num_processes} must be 1 or more")
    if process_id is not None and process_id < 0:
        raise FlagError(f"--process_id {process_id} must be 0 or more")
    if None not in (num_processes, process_id) and process_id >= num_processes:
        raise FlagError(f"--process_id {process_id} is not below --num_processes {num_processes}")
    counts = (("--num_processes", num_processes), ("--process_id", process_id))
    if coordinator_address:
        missing = [flag for flag, value in counts if value is None]
        if missing:
            raise FlagError(f"--coordinator_address needs {' and '.join(missing)}")
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit():
            raise FlagError(f"--coordinator_address {coordinator_address} is not host:port")
    elif not multihost:
        given = [flag for flag, value in counts if value is not None]
        if given:
            raise FlagError(
                f"{' and '.join(given)} need --coordinator_address=host:port (or --multihost "
                "on a Cloud TPU pod or a SLURM / Open MPI cluster)"
            )
        return None
    kwargs = dict(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes,
        process_id=process_id,
    )
    return {name: value for name, value in kwargs.items() if value is not None}


def init_distributed() -> None:
    """`jax.distributed.initialize()` when the flags ask for several processes.

    Raises FlagError (one line) for flags that cannot work and when jax fails.
    """
    kwargs = distributed_kwargs(
        FLAGS.multihost, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    if kwargs is None:
        return
    import jax

    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:  # jaxlib's XlaRuntimeError is a RuntimeError
        text = str(e).strip()
        reason = text.splitlines()[0].rstrip(".") if text else type(e).__name__
        if "coordinator_address" in kwargs:
            raise FlagError(
                f"--coordinator_address {kwargs['coordinator_address']}: "
                f"jax.distributed.initialize() failed: {reason}"
            ) from None
        if "coordinator_address" in reason:  # auto-detection found no cluster to ask
            raise FlagError(
                f"--multihost: jax.distributed.initialize() found no cluster ({reason}); on "
                "one machine drop --multihost, elsewhere pass --coordinator_address/"
                "--num_processes/--process_id"
            ) from None
        raise FlagError(f"--multihost: jax.distributed.initialize() failed: {reason}") from None


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
        FlagError,
    )
