"""Tests for the entry points' shared flags, argument rewriting and multi-host set-up."""

import os
import signal
import sys

import pytest
from absl.testing import flagsaver

from ecomgpt_jax import launch, orbax_failures


def test_rewrite_gin_args_t5x_form():
    argv = ["prog", "--gin_file=a.gin", "--gin.MODEL_DIR='/tmp/x'", "--gin.MESH_SHAPE=(1, 2, 4)"]
    assert launch.rewrite_gin_args(argv) == [
        "prog",
        "--gin_file=a.gin",
        "--gin_bindings=MODEL_DIR = '/tmp/x'",
        "--gin_bindings=MESH_SHAPE = (1, 2, 4)",
    ]


def test_a_gin_binding_with_a_space_is_one_line(capsys):
    """absl would call `--gin.TRAIN_STEPS 3` an unknown flag `gin.TRAIN_STEPS`."""
    with pytest.raises(SystemExit) as info:
        launch.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS", "3"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: --gin.TRAIN_STEPS: write the binding as --gin.TRAIN_STEPS=VALUE (one argument)\n"
    )


def test_quiet_logs_drops_only_the_item_metadata_warning(caplog):
    import logging

    from absl import logging as absl_logging

    launch.define_flags()
    verbosity = absl_logging.get_verbosity()
    absl_logger = logging.getLogger("absl")
    try:
        launch.quiet_logs()
        launch.quiet_logs()  # idempotent: one filter
        assert absl_logging.get_verbosity() == absl_logging.WARNING
        assert absl_logger.filters.count(orbax_failures.not_item_metadata_warning) == 1
        with caplog.at_level(logging.WARNING, logger="absl"):
            absl_logger.warning(
                "Metadata file does not exist: /run/checkpoints/3/params/_CHECKPOINT_METADATA"
            )
            absl_logger.warning(
                "Metadata file does not exist: /run/checkpoints/3/_CHECKPOINT_METADATA"
            )
            absl_logger.warning("something else")
        assert [r.getMessage() for r in caplog.records] == [
            "Metadata file does not exist: /run/checkpoints/3/_CHECKPOINT_METADATA",  # the step's
            "something else",
        ]
    finally:
        absl_logging.set_verbosity(verbosity)
        absl_logger.removeFilter(orbax_failures.not_item_metadata_warning)
        absl_logger.removeFilter(orbax_failures.without_trace)


def test_a_bad_flag_is_one_line_and_exit_2(capsys):
    launch.define_flags()
    with pytest.raises(SystemExit) as info:
        launch.parse_flags(["prog", "--gin_files=a.gin"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: Unknown command line flag 'gin_files'. Did you mean: gin_file ? "
        "(--helpfull lists the flags)\n"
    )
    with pytest.raises(SystemExit):
        launch.parse_flags(["prog", "--num_processes=abc"])
    assert capsys.readouterr().err.startswith("error: flag --num_processes=abc: ")


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull", "--helpshort", "-?", "-help"])
def test_help_prints_the_usage_and_exits_0(flag, capsys):
    from absl import app

    launch.define_flags()
    app.define_help_flags()
    try:
        with pytest.raises(SystemExit) as info:
            launch.parse_flags(["prog", "--gin_file=a.gin", flag])
    finally:
        launch.FLAGS.unparse_flags()
    assert info.value.code == 0  # absl's own exit status is 1
    assert "--helpfull" in capsys.readouterr().out
    # A help flag after "--" is an argument of the program, not a request for help.
    assert launch.parse_flags(["prog", "--", flag]) == ["prog", flag]
    launch.FLAGS.unparse_flags()


def test_define_flags_twice_is_harmless():
    launch.define_flags()
    launch.define_flags()
    assert "gin_file" in launch.FLAGS and "coordinator_address" in launch.FLAGS


@pytest.mark.parametrize(
    "multihost, address, num, pid, message",
    [
        (
            False,
            "localhost:12355",
            None,
            None,
            "--coordinator_address needs --num_processes and --process_id",
        ),
        (False, "localhost:12355", 2, None, "--coordinator_address needs --process_id"),
        (False, "localhost", 2, 0, "--coordinator_address localhost is not host:port"),
        (False, "localhost:12355", 2, 5, "--process_id 5 is not below --num_processes 2"),
        (False, None, 2, 5, "--process_id 5 is not below --num_processes 2"),
        (True, None, 0, None, "--num_processes 0 must be 1 or more"),
        (False, None, None, -1, "--process_id -1 must be 0 or more"),
        (
            False,
            None,
            2,
            1,
            "--num_processes and --process_id need --coordinator_address=host:port (or "
            "--multihost on a Cloud TPU pod or a SLURM / Open MPI cluster)",
        ),
    ],
)
def test_bad_multihost_flags_are_one_line(multihost, address, num, pid, message):
    with pytest.raises(launch.FlagError) as info:
        launch.distributed_kwargs(multihost, address, num, pid)
    assert str(info.value) == message


def test_multihost_flags_that_work():
    assert launch.distributed_kwargs(False, None, None, None) is None
    assert launch.distributed_kwargs(True, None, None, None) == {}
    assert launch.distributed_kwargs(False, "h:1", 2, 1) == {
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 1,
    }
    assert launch.FlagError in launch.user_errors()  # train and eval print it as one line


def test_init_distributed_reports_jax_failures_as_one_line(monkeypatch):
    import jax

    def fail(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", fail)
    if not launch.FLAGS.is_parsed():
        launch.FLAGS(["prog"])
    unset = dict(coordinator_address=None, num_processes=None, process_id=None)
    with flagsaver.flagsaver(multihost=True, **unset), pytest.raises(launch.FlagError) as info:
        launch.init_distributed()
    assert str(info.value) == (
        "--multihost: jax.distributed.initialize() found no cluster (coordinator_address "
        "should be defined); on one machine drop --multihost, elsewhere pass "
        "--coordinator_address/--num_processes/--process_id"
    )

    def timeout(**kwargs):
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\nmore detail")

    monkeypatch.setattr(jax.distributed, "initialize", timeout)
    given = dict(coordinator_address="h:1", num_processes=2, process_id=1)
    with flagsaver.flagsaver(multihost=False, **given), pytest.raises(launch.FlagError) as info:
        launch.init_distributed()
    assert str(info.value) == (
        "--coordinator_address h:1: jax.distributed.initialize() failed: DEADLINE_EXCEEDED: "
        "Barrier timed out"
    )


def test_init_distributed_passes_the_flags_to_jax(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    if not launch.FLAGS.is_parsed():
        launch.FLAGS(["prog"])
    given = dict(coordinator_address="h:1234", num_processes=4, process_id=3)
    with flagsaver.flagsaver(multihost=False, **given):
        launch.init_distributed()
    unset = dict(coordinator_address=None, num_processes=None, process_id=None)
    with flagsaver.flagsaver(multihost=True, **unset):
        launch.init_distributed()  # a TPU slice or SLURM: jax finds the cluster itself
    with flagsaver.flagsaver(multihost=False, **unset):
        launch.init_distributed()  # one process: nothing to initialize
    assert calls == [given, {}]


def test_status_of_makes_a_ctrl_c_one_line(capsys):
    assert launch.status_of(lambda: 0) == 0

    def interrupted():
        raise KeyboardInterrupt

    assert launch.status_of(interrupted) == launch.INTERRUPTED_EXIT_CODE == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_interrupt_watch_remembers_a_ctrl_c_python_dropped(monkeypatch):
    """A Ctrl-C landing in a __del__ (or jax's gc callback) is dropped by Python, which
    would print a trace; the watch still knows of it, prints nothing, and `check` raises
    it. Other dropped errors still reach the hook."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)

    class CtrlCInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs at a bytecode boundary in here
                pass

    class OSErrorInDel:
        def __del__(self):
            raise OSError("not ours")

    # As in a terminal: a test run in the background of a script inherits SIGINT ignored,
    # which the watch (rightly) leaves ignored.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with launch.InterruptWatch() as watch:
            watch.check()  # nothing yet
            CtrlCInDel()  # deleted at once: its __del__ raises, and Python drops it
            assert dropped == []
            with pytest.raises(KeyboardInterrupt):
                watch.check()
            OSErrorInDel()
            assert [type(d.exc_value) for d in dropped] == [OSError]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert sys.unraisablehook == dropped.append
    finally:
        signal.signal(signal.SIGINT, before)


def test_interrupt_watch_leaves_an_ignored_ctrl_c_ignored():
    """nohup, or `cmd &` in a script: SIGINT ignored stays ignored inside the watch."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with launch.InterruptWatch():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
