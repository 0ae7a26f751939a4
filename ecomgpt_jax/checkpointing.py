"""Orbax checkpoints: periodic async saves, resume from the latest, resharded restore.

Layout of a training run (`MODEL_DIR`):

    MODEL_DIR/checkpoints/<step>/params/   the model parameters (orbax PyTree)
    MODEL_DIR/checkpoints/<step>/train/    {"step", "opt_state", "rng"} (orbax PyTree)
    MODEL_DIR/checkpoints/<step>/data/     input position (JSON, see `DataPosition`)

Parameters are their own item so that evaluation and conversion restore them
without touching the (twice as large) optimizer state: `restore_params` takes a
run directory, a step directory or a params-only checkpoint (as written by
`python -m ecomgpt_jax.convert hf-to-orbax`). Next to the checkpoints, `model_config.json`
says which architecture they hold (written by train.py and `convert hf-to-orbax`; read
by eval, convert and INIT_FROM_CHECKPOINT).

Every path may be local or a bucket (`gs://...`, anything `etils.epath` opens).

Every restore takes *target* shardings, so a checkpoint written on one mesh
loads onto any other (different device count, FSDP vs data parallel, ...). A
checkpoint that does not fit the model or optimizer, or that cannot be read, raises
one-line CheckpointError naming the folder (never orbax's tree dump).
Every process must call `save` / `restore` (orbax coordinates the hosts; each
writes its own shards).

Needs only jax, flax and orbax (no TensorFlow, SeqIO or gin).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from ecomgpt_jax import orbax_failures
from ecomgpt_jax.models.config import ConfigError, ModelConfig
from ecomgpt_jax.train_step import (
    StateLayout,
    TrainState,
    field_error,
)
from ecomgpt_jax.values import is_integer

PyTree = Any

CHECKPOINTS_SUBDIR = "checkpoints"
MODEL_CONFIG_FILE = "model_config.json"


class CheckpointError(ValueError):
    """A checkpoint path that does not hold what was asked for."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, lost permissions): training stops,
    and the message names the last step saved."""


class ModelMismatch(CheckpointError):
    """Readable parameters of another model (tree or shapes) than the one asked for."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and how many to keep.

    save_every_steps: the trainer saves when `step % save_every_steps == 0`, at the
      last step and on preemption. keep: how many of the latest to keep.
    async_save: write in a background thread while training continues.
    """

    save_every_steps: int = 1000
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        for field, macro in (("save_every_steps", "SAVE_EVERY_STEPS"), ("keep", None)):
            value = getattr(self, field)
            if not is_integer(value) or value < 1:
                raise field_error(self, field, "must be an integer >= 1", macro)
        if not isinstance(self.async_save, bool):
            raise field_error(self, "async_save", "must be True or False")


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the input pipeline stands: resume skips `batches_consumed` batches.

    The pipeline is a deterministic function of (mixture, seed, batch size,
    logical data shards, lengths), so the count alone identifies the next unseen
    batch. The other fields detect a resume with a changed pipeline (then the
    count means something else).
    """

    batches_consumed: int = 0
    mixture: str = ""
    seed: int = 0
    global_batch_size: int = 0
    num_shards: int = 1
    # (inputs, targets) lengths, split and packing; None in checkpoints written before
    # they were recorded (then not compared).
    lengths: tuple[int, int] | None = None
    split: str | None = None
    pack: bool | None = None
    # `input_pipeline.sources_digest`: the mixture's tasks, rates and data sources (None in
    # older checkpoints).
    sources: str | None = None

    # What must not change for `batches_consumed` to keep its meaning: field -> the
    # setting that decides it, as the user wrote it.
    PIPELINE = {
        "mixture": "MIXTURE_OR_TASK_NAME",
        "seed": "SEED",
        "global_batch_size": "BATCH_SIZE",
        "num_shards": "DataConfig.num_shards",
        "lengths": "TASK_FEATURE_LENGTHS (inputs, targets)",
        "split": "DataConfig.split",
        "pack": "DataConfig.pack",
        "sources": (
            "the mixture's tasks, rates, data sources (JSON or prepared TFDS) or JSON file "
            "sizes, or the order this version reads them in (per-task shuffles since "
            "2026-11-28)"
        ),
    }

    def changes_from(self, stored: DataPosition) -> list[str]:
        """How this pipeline differs from the `stored` one, e.g. ["BATCH_SIZE 8 -> 4"]
        (fields the stored one lacks aside); [] when it does not."""
        changes = []
        for name, setting in self.PIPELINE.items():
            old, new = getattr(stored, name), getattr(self, name)
            if old is not None and old != new:
                # A digest's values say nothing to a reader: its setting alone.
                changes.append(setting if name == "sources" else f"{setting} {old!r} -> {new!r}")
        if stored.sources is None and self.sources is not None and stored.num_shards > 1:
            # Written before each shard picked tasks with its own seed (shard 0 reads as then).
            changes.append("the task picks of data shards 1 and up (changed since)")
        return changes

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> DataPosition:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in obj.items() if k in known}
        if fields.get("lengths") is not None:  # a JSON list
            fields["lengths"] = tuple(fields["lengths"])
        return cls(**fields)


def not_a_folder(path) -> str | None:
    """Why a local `path` cannot be (made) a folder: "is a file", "is inside <p>, a file"
    or "is a link to nothing"; None where it can, and for gs:// paths (their writes say).
    For MODEL_DIR and EVAL_DIR, which orbax and the writers would otherwise fail on with a
    trace after minutes of work."""
    if "://" in str(path):
        return None
    path = pathlib.Path(os.path.abspath(path))
    for p in (path, *path.parents):
        if os.path.lexists(p):  # a dangling link too: it cannot be made a folder
            if p.is_dir():
                return None
            kind = "a link to nothing" if not p.exists() else "a file"
            return f"is {kind}" if p == path else f"is inside {p}, {kind}"
    return None


def make_writable_folder(path) -> epath.Path:
    """Creates the folder `path` (and its parents) and checks that a file can be written
    in it: an existing folder may still be read-only. Returns it (an absolute
    epath.Path); raises what the file system raised (OSError, or a bucket's error)."""
    folder = as_path(path)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write_check"
    probe.write_text("")
    probe.unlink()
    return folder


def as_path(path) -> epath.Path:
    """An absolute `epath.Path`: local paths are made absolute, `gs://...` kept."""
    path = str(path)
    return epath.Path(path if "://" in path else os.path.abspath(path))


def write_atomically(path, data: str | bytes) -> None:
    """The whole file to `<path>.tmp`, then renamed over `path`: a kill mid-write leaves
    the old file or the new one, never a cut one (a rename is atomic on a local disk;
    buckets replace whole objects)."""
    path = as_path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            if tmp.is_file():  # ours, half written (not, say, a folder in the way)
                tmp.unlink()
        raise


def save_model_config(directory, cfg: ModelConfig) -> epath.Path:
    """Writes `<directory>/model_config.json` (creating the directory)."""
    path = as_path(directory) / MODEL_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(cfg.to_json_dict(), indent=2, sort_keys=True) + "\n")
    return path


def load_model_config(path) -> ModelConfig:
    """Reads a model_config.json file (or `<dir>/model_config.json`); ConfigError
    naming the file if it is missing or not a valid config."""
    path = as_path(path)
    if path.is_dir():
        path = path / MODEL_CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path}: not found")
    try:
        return ModelConfig.from_json_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ConfigError) as e:
        raise ConfigError(f"{path}: {e}") from None


def find_upwards(path, name: str, levels: int = 4) -> epath.Path | None:
    """`<dir>/name` for the nearest `dir` at `path` or up to `levels` folders above it
    that holds such a file (a params folder sits 3 below its run directory), or None."""
    path = as_path(path)
    for candidate in [path, *list(path.parents)[:levels]]:
        if (candidate / name).is_file():
            return candidate / name
    return None


def find_model_config(path, levels: int = 4) -> ModelConfig | None:
    """The nearest model_config.json at or above `path` (see `find_upwards`), or None."""
    file = find_upwards(path, MODEL_CONFIG_FILE, levels)
    return None if file is None else load_model_config(file)


def has_checkpoint(model_dir) -> bool:
    """Whether a run directory holds a finished step (the run resumes from it), without
    creating anything as `Checkpointer` does. Locally Orbax writes a step under a
    temporary name and renames it when complete, so a digits-only name is a finished
    save; in a bucket (no atomic rename) it writes in place and marks the end with
    `commit_success.txt`."""
    return bool(_finished_steps(as_path(model_dir) / CHECKPOINTS_SUBDIR))


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for `TrainState` + data position."""

    def __init__(self, model_dir, config: CheckpointConfig):
        self.directory = as_path(model_dir) / CHECKPOINTS_SUBDIR
        self.config = config
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(config.save_every_steps), 1),
            max_to_keep=max(int(config.keep), 1),
            enable_async_checkpointing=bool(config.async_save),
            create=True,
        )
        # Handlers up front (not just item names) so that `item_metadata` can read a step's
        # tree before restoring it: restore checks the tree against the model first.
        handlers = {
            "params": ocp.StandardCheckpointHandler(),
            "train": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self._started: list[int] = []  # the steps of the saves started (error messages)
        self._failed = False  # a CheckpointWriteError was raised
        # A failing async save's writes end in orbax's closed event loop; the run stops
        # with one line for them (`_writing`), not a trace per write.
        sys.unraisablehook = orbax_failures.closed_loop_ignored(sys.unraisablehook)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, state: TrainState, position: DataPosition, force: bool = False) -> bool:
        """Saves at `state.step` if due (or `force`); returns whether a save started.

        With async saving the arrays are copied to host memory before returning,
        so the caller may donate `state` to the next step right away.
        """
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(
                {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
            ),
            data=ocp.args.JsonSave(position.to_json()),
        )
        self._started.append(step)
        with self._writing():  # also an earlier async save's failure, raised here by orbax
            return bool(self._manager.save(step, args=args, force=force))

    @contextlib.contextmanager
    def _writing(self):
        """Turns orbax's failures to write (tensorstore's errors, OSError) into one
        CheckpointWriteError naming the step and the last step saved."""
        try:
            yield
        except (OSError, ValueError) as e:  # tensorstore's are ValueErrors; orbax
            # re-raises the background save's error as it was. (Anything else: a bug,
            # with its trace.)
            self._failed = True
            saved = _finished_steps(self.directory)
            last = f"the last step saved is {saved[-1]}" if saved else "no step is saved"
            # The first save started after the last one saved: async saves fail late.
            failed = [s for s in self._started if not saved or s > saved[-1]]
            where = self.step_dir(failed[0]) if failed else self.directory
            reason = orbax_failures.write_reason(e)
            raise CheckpointWriteError(
                f"{where}: checkpoint could not be written ({reason}); {last}"
            ) from None

    def check(self) -> None:
        """CheckpointWriteError if an async save failed since the last check (cheap: each
        step may call it, so that a full disk stops training at once)."""
        with self._writing():
            self._manager.check_for_errors()
            # orbax's finalize thread takes a failed save's error out of the async
            # checkpointer and keeps it for wait_until_finished, which returns at once
            # when no save is running (and raises that error).
            if not self._manager.is_saving_in_progress():
                self._manager.wait_until_finished()

    def restore(self, step: int, layout: StateLayout) -> tuple[TrainState, DataPosition]:
        """Restores step `step` into the shardings of `layout` (any mesh).

        CheckpointError (one line naming the step folder) when the stored parameters or
        optimizer state do not fit `layout`, when the step cannot be read (damaged), or
        when its arrays cannot be placed on `layout`'s mesh and devices.
        """
        target = layout.abstract
        train_target = {"step": target.step, "opt_state": target.opt_state, "rng": target.rng}
        # data/ too: without it orbax's error would read as a mesh that cannot hold the
        # arrays (a copy cut short before its small JSON item).
        missing = _missing_files(self.step_dir(step), ("params", "train", "data"))
        if missing:
            raise self._damaged(step, missing)
        try:
            stored = self._manager.item_metadata(step)
            stored_params, stored_train = stored["params"], stored["train"]
        except (ValueError, OSError, KeyError) as e:
            raise self._damaged(step, orbax_failures.short(e)) from None
        for name, item in (("params", stored_params), ("train", stored_train)):
            if item is None:
                raise self._damaged(step, f"no readable metadata in {name}/")
        step_dir = self.step_dir(step)
        difference = orbax_failures.tree_difference(stored_params, target.params, "the model")
        if difference is not None:
            raise CheckpointError(
                f"{step_dir}: parameters do not match the model ({difference}); use a new "
                "MODEL_DIR or the model it was trained with"
            )
        difference = orbax_failures.tree_difference(stored_train, train_target, "the optimizer")
        if difference is not None:
            raise CheckpointError(
                f"{step_dir}: optimizer state does not match the optimizer ({difference}); use "
                "a new MODEL_DIR or the optimizer settings it was trained with"
            )
        mesh = dict(layout.shardings.step.mesh.shape)

        def not_placeable(why: str) -> CheckpointError:
            # The target (mesh shardings, device memory), not the files: the checkpoint
            # may be fine, so no advice to move it away.
            return CheckpointError(
                f"{step_dir}: cannot be restored onto this mesh/device (mesh {mesh}): {why}"
            )

        unplaceable = orbax_failures.unplaceable(target)
        if unplaceable is not None:  # before orbax starts reads it would leave behind
            raise not_placeable(unplaceable)
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params),
            train=ocp.args.StandardRestore(train_target),
            data=ocp.args.JsonRestore(),
        )
        restored = orbax_failures.restore_or_raise(
            lambda: self._manager.restore(step, args=args),
            lambda why: self._damaged(step, why),
            not_placeable,
        )
        train = restored["train"]
        state = TrainState(
            step=train["step"],
            params=restored["params"],
            opt_state=train["opt_state"],
            rng=train["rng"],
        )
        data = restored["data"]
        if not (isinstance(data, dict) and is_integer(data.get("batches_consumed"))):
            # Else a resume would read the data from its start again without a word.
            raise self._damaged(step, "data/ holds no batches_consumed count")
        return state, DataPosition.from_json(data)

    def _damaged(self, step: int, detail: str) -> CheckpointError:
        # No automatic fall-back to an older step: the damaged folder would stay the
        # latest, and the next save at that step would be skipped as already present.
        older = [s for s in self.all_steps() if s < step]
        then = f"resume from step {older[-1]}" if older else "start from scratch"
        return _unreadable(self.step_dir(step), detail, f"; move that folder away to {then}")

    def wait(self) -> None:
        """Blocks until pending async saves are committed; CheckpointWriteError if one
        failed."""
        with self._writing():
            self._manager.wait_until_finished()
            self._manager.check_for_errors()

    def close(self) -> None:
        """Waits for pending saves (CheckpointWriteError if one failed, unless a failure
        was raised already: not to hide it) and closes orbax's manager."""
        if self._failed:
            with contextlib.suppress(Exception):
                self._manager.close()
            return
        try:
            self.wait()
        finally:
            self._manager.close()


def _looks_like_pytree_checkpoint(path: epath.Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
    )


def _numeric_subdirs(path: epath.Path) -> list[int]:
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir())


def _finished_steps(checkpoints: epath.Path) -> list[int]:
    """The steps under a `checkpoints/` folder whose save finished (see `has_checkpoint`):
    in a bucket a step folder exists from the save's start, so it needs its commit marker."""
    steps = _numeric_subdirs(checkpoints)
    if "://" in str(checkpoints):
        steps = [s for s in steps if (checkpoints / str(s) / "commit_success.txt").exists()]
    return steps


def resolve_params_path(path) -> epath.Path:
    """The orbax PyTree directory holding parameters, from any of:

    a run directory (latest step under `checkpoints/`), a `checkpoints/`
    directory, a step directory (`.../<step>` with a `params` item), or a
    params-only checkpoint directory. Raises CheckpointError naming the path.
    """
    root = as_path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    candidates = [root]
    if (root / CHECKPOINTS_SUBDIR).is_dir():
        candidates.insert(0, root / CHECKPOINTS_SUBDIR)
    for cand in candidates:
        steps = _finished_steps(cand)
        if steps:
            return resolve_params_path(cand / str(steps[-1]))
    if (root / "params").is_dir() and _looks_like_pytree_checkpoint(root / "params"):
        return root / "params"
    if _looks_like_pytree_checkpoint(root):
        return root
    raise CheckpointError(
        f"{path}: no orbax checkpoint found (expected a run directory, a step directory "
        "with a 'params' item, or a params checkpoint written by `convert hf-to-orbax`)"
    )


def _missing_files(step_dir: epath.Path, items=("params", "train")) -> str | None:
    """What a step folder lacks of its array `items`, as text; None if complete.

    Checked before orbax reads: its failed reads leave background callbacks that print
    "Event loop is closed" traces after the one-line error.
    """
    for name in items:
        item = step_dir / name
        if not item.is_dir():
            return f"no {name}/ folder"
        # OCDBT (orbax's default format): the data files are useless without the manifest.
        ocdbt = any(p.name.startswith("ocdbt.process_") for p in item.iterdir())
        if ocdbt and not (item / "manifest.ocdbt").exists():
            return f"{name}/manifest.ocdbt is missing"
    return None


def _unreadable(folder: epath.Path, detail: str, advice: str = "") -> CheckpointError:
    return CheckpointError(
        f"{folder}: checkpoint cannot be read, damaged or incomplete ({detail}){advice}"
    )


def _check_matches(params_dir: epath.Path, stored, abstract_params: PyTree) -> None:
    """CheckpointError naming the first parameter missing, extra or of another shape."""
    difference = orbax_failures.tree_difference(stored, abstract_params, "the model")
    if difference is not None:
        raise ModelMismatch(f"{params_dir}: parameters do not match the model ({difference})")


def params_metadata(path) -> tuple[epath.Path, PyTree]:
    """The params folder of `path` (see `resolve_params_path`) and its stored tree of
    array metadata (shapes, dtypes), nothing read of the arrays themselves.

    Raises CheckpointError where the folder is incomplete or its metadata unreadable.
    """
    params_dir = resolve_params_path(path)
    missing = _missing_files(params_dir.parent, (params_dir.name,))
    if missing:
        raise _unreadable(params_dir, missing)
    orbax_failures.quiet_logs()
    # A failed read's callbacks end in orbax's closed loop: quiet, as for a failed restore.
    sys.unraisablehook = orbax_failures.closed_loop_ignored(sys.unraisablehook)
    failure = None
    with orbax_failures.metadata_warning_dropped(), ocp.StandardCheckpointer() as checkpointer:
        try:
            stored = checkpointer.metadata(params_dir).item_metadata
        except (ValueError, OSError, KeyError) as e:
            failure = orbax_failures.short(e)
    if failure is None and stored is None:  # no _METADATA: else "the checkpoint lacks" all
        failure = f"no readable metadata in {params_dir.name}/"
    if failure is not None:
        orbax_failures.drop_failed_reads()  # its reads still in flight: quietly
        raise _unreadable(params_dir, failure)
    return params_dir, stored


def restore_params(path, abstract_params: PyTree) -> PyTree:
    """Restores parameters from `path` (see `resolve_params_path`) into `abstract_params`.

    abstract_params: pytree of jax.ShapeDtypeStruct with the target `.sharding`
    (and dtype: stored float32 restores as bfloat16 when asked, and back).
    A checkpoint whose tree or shapes differ from the model, that cannot be read (damaged)
    or whose arrays cannot be placed on the target shardings raises CheckpointError.
    """
    params_dir, stored = params_metadata(path)
    _check_matches(params_dir, stored, abstract_params)
    with ocp.StandardCheckpointer() as checkpointer:
        return orbax_failures.restore_or_raise(
            lambda: checkpointer.restore(params_dir, abstract_params),
            lambda why: _unreadable(params_dir, why),
            lambda why: CheckpointError(
                f"{params_dir}: cannot be restored onto this mesh/device: {why}"
            ),
        )


def save_params(path, params: PyTree) -> None:
    """Writes a params-only orbax checkpoint (the format `restore_params` reads).

    Synchronously: a failed write of the asynchronous StandardCheckpointer leaves orbax
    threads running, and the process never exits after its error (orbax 0.12).
    """
    path = as_path(path)
    # A failed write logs its trace and ends in orbax's closed loop: one line instead.
    orbax_failures.quiet_logs()
    sys.unraisablehook = orbax_failures.closed_loop_ignored(sys.unraisablehook)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        try:
            checkpointer.save(path, params)
        except (OSError, ValueError) as e:  # tensorstore's write errors are ValueErrors
            reason = orbax_failures.write_reason(e)
        else:
            return
    # The other arrays' writes are still in flight: they would recreate the folders a
    # caller removes next (convert removes an output folder it made).
    orbax_failures.drop_failed_reads()
    raise CheckpointWriteError(f"{path}: could not be written ({reason})")
