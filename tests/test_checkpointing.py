"""Checkpoints: round trip, restore onto another mesh, keep-K, params-only restores."""

import dataclasses
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecomgpt_jax import checkpointing as ck
from ecomgpt_jax import partitioning as P
from ecomgpt_jax import train_step as ts
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import decoder

CFG = dataclasses.replace(
    model_config.get_preset("tiny-bloom"),
    hidden=32,
    heads=4,
    kv_heads=4,
    head_dim=8,
    mlp_dim=128,  # BLOOM: 4 * hidden
    vocab_size=128,
)
MODEL = decoder.Decoder(CFG)
TX = ts.make_optimizer(ts.OptimizerConfig(learning_rate=1e-2), 10)


def layout_on(shape, n_devices=8) -> ts.StateLayout:
    """Shapes + shardings only (no arrays): the restore target on another mesh."""
    mesh = P.make_mesh(P.MeshConfig(shape), jax.devices()[:n_devices])
    return ts.state_layout(MODEL, TX, mesh)


@pytest.fixture(scope="module")
def trained():
    """A state after two real updates on a (2, 2, 2) mesh (non-trivial Adam moments)."""
    layout = layout_on((2, 2, 2))
    mesh = layout.shardings.step.mesh
    with jax.set_mesh(mesh), P.axis_rules():
        state = ts.init_state(MODEL, TX, layout, seed=0)
    rs = np.random.RandomState(0)
    batch = {
        ts.INPUTS: rs.randint(0, 128, (8, 16)).astype(np.int32),
        ts.TARGETS: rs.randint(0, 128, (8, 16)).astype(np.int32),
        ts.WEIGHTS: np.ones((8, 16), np.float32),
        ts.SEGMENT_IDS: np.ones((8, 16), np.int32),
        ts.POSITIONS: np.tile(np.arange(16, dtype=np.int32), (8, 1)),
    }
    with jax.set_mesh(mesh), P.axis_rules():
        step = ts.jit_train_step(
            ts.make_train_step(MODEL, TX, ts.StepConfig()), layout, P.data_sharding(mesh)
        )
        for _ in range(2):
            state, _ = step(state, batch)
    return layout, state


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_onto_another_mesh(tmp_path, trained):
    _, state = trained
    manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig(save_every_steps=1))
    position = ck.DataPosition(2, "m", 3, 8, 2, lengths=(96, 32), split="train", pack=True)
    assert manager.save(state, position)
    assert not manager.save(state, position)  # same step twice: no-op
    manager.close()

    target = layout_on((1, 2, 2), n_devices=4)  # other devices, tensor parallel
    restored, restored_position = ck.Checkpointer(tmp_path, ck.CheckpointConfig()).restore(
        2, target
    )
    assert restored_position == position
    assert int(restored.step) == 2
    assert_trees_equal(restored, state)
    qkv = restored.params["layers"]["attn"]["qkv_kernel"]
    assert qkv.sharding == target.shardings.params["layers"]["attn"]["qkv_kernel"]
    assert len(qkv.sharding.device_set) == 4
    mu = restored.opt_state[1][0].mu["layers"]["attn"]["qkv_kernel"]
    assert mu.sharding.spec == qkv.sharding.spec


def test_keeps_the_last_k(tmp_path, trained):
    layout, state = trained
    manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig(save_every_steps=1, keep=2))
    for step in (1, 2, 3):
        manager.save(state.replace(step=jnp.int32(step)), ck.DataPosition(step), force=True)
    manager.wait()
    assert manager.all_steps() == [2, 3]
    assert manager.latest_step() == 3
    manager.close()
    restored, position = ck.Checkpointer(tmp_path, ck.CheckpointConfig()).restore(3, layout)
    assert position.batches_consumed == 3 and int(restored.step) == 3


def test_restore_params_from_run_step_or_params_dir(tmp_path, trained):
    _, state = trained
    manager = ck.Checkpointer(tmp_path / "run", ck.CheckpointConfig())
    manager.save(state, ck.DataPosition(2), force=True)
    manager.close()
    ck.save_params(tmp_path / "converted" / "params", state.params)

    target = layout_on((1, 1, 1), n_devices=1)
    for path in (
        tmp_path / "run",
        tmp_path / "run" / "checkpoints",
        tmp_path / "run" / "checkpoints" / "2",
        tmp_path / "converted",
        tmp_path / "converted" / "params",
    ):
        params = ck.restore_params(path, target.abstract.params)
        assert_trees_equal(params, state.params)
    assert ck.resolve_params_path(tmp_path / "run").name == "params"


def test_clear_errors(tmp_path):
    target = layout_on((1, 1, 1), n_devices=1)
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.restore_params(tmp_path / "missing", target.abstract.params)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ck.CheckpointError, match="no orbax checkpoint found"):
        ck.restore_params(tmp_path / "empty", target.abstract.params)
    # Parameters of another architecture.
    other = decoder.abstract_params(dataclasses.replace(CFG, hidden=64, head_dim=16, mlp_dim=256))
    ck.save_params(tmp_path / "other", jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), other))
    with pytest.raises(ck.CheckpointError, match="do not match the model"):
        ck.restore_params(tmp_path / "other", target.abstract.params)


def test_model_config_save_load_and_find(tmp_path):
    path = ck.save_model_config(tmp_path / "run", CFG)
    assert str(path) == str(tmp_path / "run" / "model_config.json")
    assert ck.load_model_config(path) == CFG
    assert ck.load_model_config(tmp_path / "run") == CFG
    params_dir = tmp_path / "run" / "checkpoints" / "7" / "params"
    params_dir.mkdir(parents=True)
    assert ck.find_model_config(params_dir) == CFG  # three folders up
    assert ck.find_model_config(params_dir, levels=2) is None
    with pytest.raises(model_config.ConfigError, match=r"elsewhere/model_config.json: not found"):
        ck.load_model_config(tmp_path / "elsewhere" / "model_config.json")
    path.write_text('{"family": "bloom",')
    with pytest.raises(model_config.ConfigError, match=r"run/model_config.json: .*line 1"):
        ck.load_model_config(path)


def test_bucket_paths_stay_bucket_paths(tmp_path, monkeypatch):
    """gs:// paths go to etils.epath untouched (not made local/absolute). The bucket is
    simulated by epath's mock backend, which maps gs://b/x to ./gs:/b/x."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    monkeypatch.chdir(tmp_path)
    # With TensorFlow installed epath picks its gfile backend before the mocked table.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    with epath_testing.mock_epath():
        written = ck.save_model_config("gs://bucket/run", CFG)
        assert str(written) == "gs://bucket/run/model_config.json"
        assert str(ck.as_path("gs://bucket/run")) == "gs://bucket/run"
        assert ck.find_model_config("gs://bucket/run/checkpoints/7/params") == CFG
        marker = tmp_path / "gs:" / "bucket" / "run" / "checkpoints" / "7" / "params"
        marker.mkdir(parents=True)
        (marker / "_CHECKPOINT_METADATA").write_text("{}")
        (marker.parent / "commit_success.txt").write_text("")  # a finished save
        resolved = ck.resolve_params_path("gs://bucket/run")
        assert str(resolved) == "gs://bucket/run/checkpoints/7/params"
    assert (tmp_path / "gs:" / "bucket" / "run" / "model_config.json").is_file()
    assert str(ck.as_path("relative/dir")) == str(tmp_path / "relative" / "dir")


def test_resume_of_another_model_or_a_damaged_step_is_one_line(tmp_path, trained):
    layout, state = trained
    manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig(save_every_steps=1, keep=3))
    for step in (1, 2):
        manager.save(state.replace(step=jnp.int32(step)), ck.DataPosition(step), force=True)
    manager.close()
    step_dir = tmp_path / "checkpoints" / "2"

    def error(target=layout) -> str:
        manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig())
        with pytest.raises(ck.CheckpointError) as info:
            manager.restore(2, target)
        manager.close()
        return str(info.value)

    wider = dataclasses.replace(CFG, hidden=64, head_dim=16, mlp_dim=256)
    mesh = layout.shardings.step.mesh
    assert error(ts.state_layout(decoder.Decoder(wider), TX, mesh)) == (
        f"{step_dir}: parameters do not match the model (embed/embedding has shape (128, 32) "
        "in the checkpoint, the model needs (128, 64)); use a new MODEL_DIR or the model it "
        "was trained with"
    )
    small = {f: getattr(CFG, f) for f in ("hidden", "heads", "kv_heads", "head_dim", "mlp_dim")}
    llama = dataclasses.replace(model_config.get_preset("tiny-llama"), vocab_size=128, **small)
    assert error(ts.state_layout(decoder.Decoder(llama), TX, mesh)) == (
        f"{step_dir}: parameters do not match the model (the checkpoint lacks "
        "layers/attn/k_kernel, layers/attn/q_kernel, layers/attn/v_kernel and 2 more; the "
        "model has no embed_norm/bias, embed_norm/scale, final_norm/bias and 7 more); use a "
        "new MODEL_DIR or the model it was trained with"
    )
    other_optimizer = ts.make_optimizer(ts.OptimizerConfig(max_grad_norm=0.0), 10)
    assert error(ts.state_layout(MODEL, other_optimizer, mesh)) == (
        f"{step_dir}: optimizer state does not match the optimizer (the checkpoint lacks "
        "opt_state/0/0/count, opt_state/0/0/mu/embed/embedding, "
        "opt_state/0/0/mu/embed_norm/bias and 33 more; the optimizer has no "
        "opt_state/1/0/count, opt_state/1/0/mu/embed/embedding, "
        "opt_state/1/0/mu/embed_norm/bias and 33 more); use a new MODEL_DIR or the optimizer "
        "settings it was trained with"
    )
    # A step whose optimizer item lost its data or its files (a copy cut short, a full disk).
    damaged = f"{step_dir}: checkpoint cannot be read, damaged or incomplete"
    for data_file in (step_dir / "train").glob("ocdbt.process_*/d/*"):
        data_file.write_bytes(b"")
    train_dir = re.escape(str(step_dir / "train"))
    assert re.fullmatch(
        rf'{re.escape(damaged)} \([A-Z_]+: Error reading "opt_state\.[^"]+" in OCDBT database '
        rf'at local file "{train_dir}/": [^\n]+\); move that folder away to resume from step 1',
        error(),
    )
    (step_dir / "train" / "manifest.ocdbt").unlink()
    assert error() == (
        f"{damaged} (train/manifest.ocdbt is missing); move that folder away to resume from step 1"
    )
    (step_dir / "train" / "manifest.ocdbt").write_bytes(b"")
    (step_dir / "train" / "_METADATA").unlink()
    assert error() == (
        f"{damaged} (no readable metadata in train/); move that folder away to resume from step 1"
    )
    restored, _ = ck.Checkpointer(tmp_path, ck.CheckpointConfig()).restore(1, layout)
    # Restores ignore "Event loop is closed" from then on, also before a first failure's
    # drain starts (a read in flight may reach orbax's closed loop first).
    assert getattr(sys.unraisablehook, "_closed_loop_ignored", False)
    assert int(restored.step) == 1


@pytest.mark.parametrize(
    "content, detail",
    [
        (b'{"batches_consumed": 2, "mix', None),
        (b"\xff\xfe{}", None),
        (b"{}", "data/ holds no batches_consumed count"),
        (b'{"batches_consumed": "2"}', "data/ holds no batches_consumed count"),
        (None, "no data/ folder"),  # a copy cut short before its small JSON item
    ],
)
def test_a_damaged_data_position_is_called_damage(tmp_path, trained, content, detail):
    """The data item is JSON: cut short, not text, without the count or missing, it is
    damage like a bad array file (not a mesh problem, not a silent restart of the data
    from its start), and the message says how to go on."""
    layout, state = trained
    manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig(save_every_steps=1))
    manager.save(state.replace(step=jnp.int32(2)), ck.DataPosition(2), force=True)
    manager.close()
    step_dir = tmp_path / "checkpoints" / "2"
    if content is None:
        shutil.rmtree(step_dir / "data")
    else:
        (step_dir / "data" / "metadata").write_bytes(content)  # the position's JSON
    with pytest.raises(ck.CheckpointError) as info:
        ck.Checkpointer(tmp_path, ck.CheckpointConfig()).restore(2, layout)
    message = str(info.value)
    assert message.startswith(f"{step_dir}: checkpoint cannot be read, damaged or incomplete (")
    if detail:
        assert f"({detail});" in message
    assert message.endswith("move that folder away to start from scratch")


def test_a_mesh_that_cannot_hold_the_arrays_is_not_called_damage(tmp_path, trained):
    layout, state = trained
    manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig(save_every_steps=1))
    manager.save(state, ck.DataPosition(2), force=True)
    manager.close()
    # 4 heads over a tensor axis of 8: jax cannot lay them out (a run never gets here:
    # run_config.check_mesh stops it first). The files are fine: no advice to move them away.
    manager = ck.Checkpointer(tmp_path, ck.CheckpointConfig())
    with pytest.raises(ck.CheckpointError) as info:
        manager.restore(2, layout_on((1, 1, 8)))
    manager.close()
    prefix = (
        f"{tmp_path / 'checkpoints' / '2'}: cannot be restored onto this mesh/device (mesh "
        "{'data': 1, 'fsdp': 1, 'tensor': 8}): Sharding NamedSharding(mesh=Mesh('data': 1, "
        "'fsdp': 1, 'tensor': 8"
    )
    assert str(info.value).startswith(prefix)
    assert re.search(r"partitioned 8 times, but the dimension size is 4 ", str(info.value))
    assert "\n" not in str(info.value) and "move that folder" not in str(info.value)
    restored, position = ck.Checkpointer(tmp_path, ck.CheckpointConfig()).restore(
        2, layout_on((1, 2, 4))
    )
    assert_trees_equal(restored, state)
    assert position == ck.DataPosition(2)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"save_every_steps": 0},
            "CheckpointConfig.save_every_steps=0 (SAVE_EVERY_STEPS): must be an integer >= 1",
        ),
        (
            {"save_every_steps": 100.0},
            "CheckpointConfig.save_every_steps=100.0 (SAVE_EVERY_STEPS): must be an integer >= 1",
        ),
        ({"keep": "all"}, "CheckpointConfig.keep='all': must be an integer >= 1"),
        ({"keep": 0}, "CheckpointConfig.keep=0: must be an integer >= 1"),
        ({"async_save": "no"}, "CheckpointConfig.async_save='no': must be True or False"),
    ],
)
def test_checkpoint_config_names_a_bad_field(config, message):
    with pytest.raises(model_config.ConfigError) as info:
        ck.CheckpointConfig(**config)
    assert str(info.value) == message


def test_a_changed_pipeline_is_detected_but_old_checkpoints_lack_fields():
    now = ck.DataPosition(
        5, "m", 0, 8, 2, lengths=(96, 32), split="train", pack=True, sources="4567"
    )
    assert now.changes_from(now) == []
    for field, value, change in [
        ("seed", 1, "SEED 1 -> 0"),
        ("num_shards", 4, "DataConfig.num_shards 4 -> 2"),
        ("lengths", (64, 32), "TASK_FEATURE_LENGTHS (inputs, targets) (64, 32) -> (96, 32)"),
        ("pack", False, "DataConfig.pack False -> True"),
        (
            "sources",
            "0123",
            "the mixture's tasks, rates, data sources (JSON or prepared TFDS) or JSON file "
            "sizes, or the order this version reads them in (per-task shuffles since "
            "2026-11-28)",
        ),
    ]:
        assert now.changes_from(dataclasses.replace(now, **{field: value})) == [change]
    two = dataclasses.replace(now, mixture="n", global_batch_size=4)
    assert now.changes_from(two) == ["MIXTURE_OR_TASK_NAME 'n' -> 'm'", "BATCH_SIZE 4 -> 8"]
    # Written before lengths/split/pack were recorded: those are not compared.
    old = ck.DataPosition.from_json(
        {"batches_consumed": 5, "mixture": "m", "num_shards": 2, "seed": 0, "global_batch_size": 8}
    )
    assert old.lengths is None and now.changes_from(old) == [
        "the task picks of data shards 1 and up (changed since)"
    ]  # two shards: shard 1 now picks with its own seed
    assert now.changes_from(dataclasses.replace(old, num_shards=1)) == [
        "DataConfig.num_shards 1 -> 2"
    ]
    assert ck.DataPosition.from_json(now.to_json()) == now  # lengths back as a tuple


def test_restore_params_of_a_damaged_checkpoint_is_one_line(tmp_path, trained):
    """Eval, INIT_FROM_CHECKPOINT and `convert orbax-to-hf` read a damaged params checkpoint
    as resume does: one line, not tensorstore's trace nor "the checkpoint lacks" all."""
    _, state = trained
    params_dir = tmp_path / "converted" / "params"
    ck.save_params(params_dir, state.params)
    target = layout_on((1, 1, 1), n_devices=1).abstract.params
    damaged = f"{params_dir}: checkpoint cannot be read, damaged or incomplete"

    def error() -> str:
        with pytest.raises(ck.CheckpointError) as info:
            ck.restore_params(tmp_path / "converted", target)
        return str(info.value)

    for data_file in params_dir.glob("ocdbt.process_*/d/*"):
        data_file.write_bytes(data_file.read_bytes()[:20])
    assert re.fullmatch(
        rf'{re.escape(damaged)} \([A-Z_]+: Error reading "[^"]+" in OCDBT database at local '
        rf'file "{re.escape(str(params_dir))}/": [^\n]+\)',
        error(),
    )
    for manifest in params_dir.glob("**/manifest.ocdbt"):
        manifest.unlink()
    assert error() == f"{damaged} (params/manifest.ocdbt is missing)"
    (params_dir / "manifest.ocdbt").write_bytes(b"")
    (params_dir / "_METADATA").unlink()
    assert error() == f"{damaged} (no readable metadata in params/)"


def test_a_bucket_step_still_being_written_is_not_the_latest(tmp_path, monkeypatch):
    """In a bucket a step folder exists from the save's start: without its commit marker
    (a save in progress or cut off) `resolve_params_path` skips it, as resume does."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    checkpoints = tmp_path / "gs:" / "bucket" / "run" / "checkpoints"
    with epath_testing.mock_epath():
        for step in (7, 9):
            (checkpoints / str(step) / "params").mkdir(parents=True)
            (checkpoints / str(step) / "params" / "_CHECKPOINT_METADATA").write_text("{}")
        assert not ck.has_checkpoint("gs://bucket/run")
        with pytest.raises(ck.CheckpointError, match="no orbax checkpoint found"):
            ck.resolve_params_path("gs://bucket/run")
        (checkpoints / "7" / "commit_success.txt").write_text("")
        assert ck.has_checkpoint("gs://bucket/run")
        resolved = ck.resolve_params_path("gs://bucket/run")
        assert str(resolved) == "gs://bucket/run/checkpoints/7/params"


def test_write_atomically_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "config.gin"
    ck.write_atomically(path, "old")
    ck.write_atomically(path, b"new")
    assert path.read_text() == "new"
    folder = tmp_path / "model_config.json"
    folder.mkdir()
    with pytest.raises(OSError, match="is a directory"):
        ck.write_atomically(folder, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.gin", "model_config.json"]
