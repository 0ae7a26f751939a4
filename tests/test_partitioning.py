"""The (data, fsdp, tensor) mesh: shape resolution and its errors, device layout, the logical
axis rules table, and how the input batch is split (8 simulated CPU devices, conftest.py)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from ecomgpt_jax import partitioning as P

# MeshConfig.resolve ---------------------------------------------------------------------


NOT_THREE_INTS = "MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, got "


@pytest.mark.parametrize(
    "shape, num_devices, expected",
    [
        ((-1, 1, 1), 8, (8, 1, 1)),  # the default: pure data parallel over everything
        ((1, -1, 1), 8, (1, 8, 1)),
        ((1, 1, -1), 8, (1, 1, 8)),
        ((2, -1, 2), 8, (2, 2, 2)),
        ((1, 2, -1), 8, (1, 2, 4)),
        ((-1, 2, 2), 4, (1, 2, 2)),
        ((2, 2, 2), 8, (2, 2, 2)),
        ((-1, 1, 1), 1, (1, 1, 1)),
        ((-1, 1, 1), 3, (3, 1, 1)),
        ([1, 2, 4], 8, (1, 2, 4)),  # a list (as a flag may give) comes back as a tuple
    ],
)
def test_resolve(shape, num_devices, expected):
    resolved = P.MeshConfig(shape).resolve(num_devices)
    assert resolved == expected and type(resolved) is tuple


def test_default_mesh_config_is_data_parallel():
    assert P.MeshConfig().shape == (-1, 1, 1)
    assert P.MeshConfig().resolve(8) == (8, 1, 1)


@pytest.mark.parametrize(
    "shape, num_devices, message",
    [
        (
            (2, 4),
            8,
            NOT_THREE_INTS + "(2, 4)",
        ),
        (
            (1, 2, 2, 2),
            8,
            NOT_THREE_INTS + "(1, 2, 2, 2)",
        ),
        ((-1, -1, 2), 8, "MESH_SHAPE (-1, -1, 2): at most one axis may be -1"),
        ((0, 1, 8), 8, "MESH_SHAPE (0, 1, 8): sizes must be positive or -1"),
        ((-2, 1, 4), 8, "MESH_SHAPE (-2, 1, 4): sizes must be positive or -1"),
        (
            (3, -1, 1),
            8,
            "MESH_SHAPE (3, -1, 1): the fixed axes (3) do not divide the 8 available devices",
        ),
        (
            (-1, 2, 2),
            6,
            "MESH_SHAPE (-1, 2, 2): the fixed axes (4) do not divide the 6 available devices",
        ),
        (
            (2, 2, 1),
            8,
            "MESH_SHAPE (2, 2, 1) needs 4 devices but 8 are available; "
            "use -1 for one axis to take the rest",
        ),
        (
            (2, 2, 4),
            8,
            "MESH_SHAPE (2, 2, 4) needs 16 devices but 8 are available; "
            "use -1 for one axis to take the rest",
        ),
        # Not silently rounded or read as 1: gin and JSON give floats, bools, strings.
        (
            (2.7, 1, 1),
            2,
            NOT_THREE_INTS + "(2.7, 1, 1)",
        ),
        (
            (True, -1, 1),
            8,
            NOT_THREE_INTS + "(True, -1, 1)",
        ),
        (
            (1, 1, "a"),
            1,
            NOT_THREE_INTS + "(1, 1, 'a')",
        ),
        (8, 8, NOT_THREE_INTS + "8"),
    ],
)
def test_resolve_errors_name_the_shape_and_the_problem(shape, num_devices, message):
    with pytest.raises(P.MeshError, match=f"^{re.escape(message)}$"):
        P.MeshConfig(shape).resolve(num_devices)


def test_mesh_error_is_a_value_error():
    assert issubclass(P.MeshError, ValueError)


# make_mesh -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((8, 1, 1), (8, 1, 1)),
        ((1, 8, 1), (1, 8, 1)),
        ((1, 1, 8), (1, 1, 8)),
        ((2, 2, 2), (2, 2, 2)),
        ((1, 2, 4), (1, 2, 4)),
        ((-1, 1, 1), (8, 1, 1)),
        ((-1, 2, 1), (4, 2, 1)),
        ((2, 1, -1), (2, 1, 4)),
    ],
)
def test_make_mesh_over_all_devices(shape, expected):
    mesh = P.make_mesh(P.MeshConfig(shape))
    assert mesh.axis_names == ("data", "fsdp", "tensor") == P.MESH_AXES
    assert dict(mesh.shape) == dict(zip(P.MESH_AXES, expected, strict=True))
    assert mesh.devices.shape == expected
    # Every device exactly once; on the CPU in id order, so `tensor` varies fastest and a
    # tensor-parallel group is neighbouring devices.
    assert [d.id for d in mesh.devices.flat] == list(range(8))


def test_make_mesh_over_given_devices():
    devices = jax.devices()
    mesh = P.make_mesh(P.MeshConfig((1, 1, 1)), devices[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert mesh.devices.flat[0] == devices[0]
    mesh = P.make_mesh(P.MeshConfig((-1, 2, 1)), devices[:4])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    assert [d.id for d in mesh.devices.flat] == [0, 1, 2, 3]
    mesh = P.make_mesh(P.MeshConfig((-1, 1, 1)), devices[:3])  # an odd count
    assert dict(mesh.shape) == {"data": 3, "fsdp": 1, "tensor": 1}
    assert [d.id for d in mesh.devices.flat] == [0, 1, 2]


def test_make_mesh_keeps_the_given_device_order():
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)), list(reversed(jax.devices())))
    assert [d.id for d in mesh.devices.flat] == [7, 6, 5, 4, 3, 2, 1, 0]


def test_make_mesh_falls_back_to_plain_order(monkeypatch):
    """Topologies mesh_utils cannot lay out still get a mesh: devices in the given order."""
    from jax.experimental import mesh_utils

    def refuse(*args, **kwargs):
        raise AssertionError("cannot lay out this topology")

    monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
    devices = jax.devices()
    mesh = P.make_mesh(P.MeshConfig((1, 2, 4)), devices[4:] + devices[:4])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert [[d.id for d in row] for row in mesh.devices[0]] == [[4, 5, 6, 7], [0, 1, 2, 3]]


def test_make_mesh_raises_mesh_error_for_the_devices_given():
    with pytest.raises(P.MeshError, match=re.escape("MESH_SHAPE (3, 1, 1) needs 3 devices but 8")):
        P.make_mesh(P.MeshConfig((3, 1, 1)))
    with pytest.raises(P.MeshError, match=re.escape("(2, 2, 2) needs 8 devices but 4 are")):
        P.make_mesh(P.MeshConfig((2, 2, 2)), jax.devices()[:4])


# The rules table ------------------------------------------------------------------------

# Every logical name and the mesh axes it lands on.
EXPECTED_RULES = {
    P.BATCH: ("data", "fsdp"),
    P.LENGTH: None,
    P.ACT_EMBED: None,
    P.ACT_HEADS: "tensor",
    P.ACT_MLP: "tensor",
    P.ACT_VOCAB: "tensor",
    P.VOCAB: "tensor",
    P.EMBED: "fsdp",
    P.MLP: "tensor",
    P.HEADS: "tensor",
    P.KV_HEADS: "tensor",
    P.HEAD_DIM: None,
    P.QKV: None,
    P.LAYERS: None,
}


def test_rules_table_names_each_logical_axis_once_and_only_mesh_axes():
    names = [name for name, _ in P.RULES]
    assert len(names) == len(set(names)) == 14
    assert dict(P.RULES) == EXPECTED_RULES
    for _, axes in P.RULES:
        used = () if axes is None else (axes,) if isinstance(axes, str) else axes
        assert set(used) <= set(P.MESH_AXES)


@pytest.mark.parametrize("name, axes", list(EXPECTED_RULES.items()))
def test_each_logical_name_maps_to_its_mesh_axes(name, axes):
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))
    sharding = P.logical_sharding(Spec(name), mesh)
    assert isinstance(sharding, NamedSharding) and sharding.mesh == mesh
    assert sharding.spec == Spec(axes)


@pytest.mark.parametrize(
    "logical, mesh_spec",
    [
        # embedding [vocab, embed]: vocabulary over tensor, model dimension over fsdp
        ((P.VOCAB, P.EMBED), ("tensor", "fsdp")),
        # MLP up kernel [embed, mlp] and down kernel [mlp, embed]: Megatron column / row split
        ((P.EMBED, P.MLP), ("fsdp", "tensor")),
        ((P.MLP, P.EMBED), ("tensor", "fsdp")),
        # a scanned attention kernel [layers, embed, heads, head_dim]
        ((P.LAYERS, P.EMBED, P.HEADS, P.HEAD_DIM), (None, "fsdp", "tensor", None)),
        ((P.LAYERS, P.EMBED, P.KV_HEADS, P.HEAD_DIM), (None, "fsdp", "tensor", None)),
        # activations
        ((P.BATCH, P.LENGTH, P.ACT_EMBED), (("data", "fsdp"), None, None)),
        ((P.BATCH, P.LENGTH, P.ACT_VOCAB), (("data", "fsdp"), None, "tensor")),
        ((P.BATCH, P.LENGTH, P.ACT_HEADS, None), (("data", "fsdp"), None, "tensor", None)),
        # a mesh axis is used once per array: the first logical axis to claim it wins
        ((P.MLP, P.HEADS), ("tensor", None)),
        # a name outside the table (or None) is replicated
        (("no_such_axis", P.EMBED), (None, "fsdp")),
        ((None, None), (None, None)),
    ],
)
def test_logical_sharding_of_specs(logical, mesh_spec):
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))
    assert P.logical_sharding(Spec(*logical), mesh).spec == Spec(*mesh_spec)


def test_logical_sharding_maps_a_pytree():
    mesh = P.make_mesh(P.MeshConfig((1, 2, 4)))
    specs = {"embed": Spec(P.VOCAB, P.EMBED), "mlp": [Spec(P.EMBED, P.MLP), Spec(P.MLP, P.EMBED)]}
    out = P.logical_sharding(specs, mesh)
    assert jax.tree.structure(out) == jax.tree.structure({"embed": 0, "mlp": [0, 0]})
    assert all(s.mesh == mesh for s in jax.tree.leaves(out))
    assert out["embed"].spec == Spec("tensor", "fsdp")
    assert [s.spec for s in out["mlp"]] == [Spec("fsdp", "tensor"), Spec("tensor", "fsdp")]


def test_logical_sharding_places_an_array_as_the_table_says():
    """[vocab 16, embed 8] on (1, 2, 4): each device holds 4 vocabulary rows x 4 columns."""
    mesh = P.make_mesh(P.MeshConfig((1, 2, 4)))
    x = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    placed = jax.device_put(x, P.logical_sharding(Spec(P.VOCAB, P.EMBED), mesh))
    for shard in placed.addressable_shards:
        _, f, t = (int(i[0]) for i in np.nonzero(mesh.devices == shard.device))
        np.testing.assert_array_equal(shard.data, x[4 * t : 4 * t + 4, 4 * f : 4 * f + 4])


def test_axis_rules_activates_the_table_for_logical_constraints():
    assert nn.get_logical_axis_rules() == ()
    with P.axis_rules():
        assert nn.get_logical_axis_rules() == P.RULES
    assert nn.get_logical_axis_rules() == ()
    mesh = P.make_mesh(P.MeshConfig((2, 2, 2)))

    def f(x):
        return nn.with_logical_constraint(x * 2, (P.BATCH, P.ACT_VOCAB))

    x = jnp.ones((8, 4), jnp.float32)
    with jax.set_mesh(mesh), P.axis_rules():
        out = jax.jit(f)(x)
    assert out.sharding.spec == Spec(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(out, np.full((8, 4), 2.0, np.float32))


# The input batch --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, divisor",
    [
        ((8, 1, 1), 8),
        ((1, 8, 1), 8),
        ((1, 1, 8), 1),
        ((2, 2, 2), 4),
        ((1, 2, 4), 2),
        ((4, 2, 1), 8),
    ],
)
def test_batch_divisor_is_data_times_fsdp(shape, divisor):
    assert P.batch_divisor(P.make_mesh(P.MeshConfig(shape))) == divisor


def test_batch_divisor_of_a_one_device_mesh():
    assert P.batch_divisor(P.make_mesh(P.MeshConfig((1, 1, 1)), jax.devices()[:1])) == 1


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4), (1, 1, 8)])
def test_data_sharding_splits_rows_over_data_and_fsdp(shape):
    mesh = P.make_mesh(P.MeshConfig(shape))
    sharding = P.data_sharding(mesh)
    assert sharding.mesh == mesh and sharding.spec == Spec(("data", "fsdp"))
    x = np.arange(16 * 3, dtype=np.int32).reshape(16, 3)
    placed = jax.device_put(x, sharding)
    np.testing.assert_array_equal(np.asarray(placed), x)
    _, fsdp, _ = shape
    rows = 16 // P.batch_divisor(mesh)
    # Device (d, f, t) holds row block d * fsdp + f, whatever its tensor index.
    for shard in placed.addressable_shards:
        d, f, _ = (int(i[0]) for i in np.nonzero(mesh.devices == shard.device))
        block = d * fsdp + f
        np.testing.assert_array_equal(shard.data, x[block * rows : (block + 1) * rows])
    assert {shard.data.shape for shard in placed.addressable_shards} == {(rows, 3)}


def test_data_sharding_row_counts():
    """8 rows: 1 per device on (8, 1, 1), 2 on (2, 2, 2), 4 on (1, 2, 4), all 8 on (1, 1, 8)."""
    x = np.zeros((8, 5), np.float32)
    for shape, rows in [((8, 1, 1), 1), ((2, 2, 2), 2), ((1, 2, 4), 4), ((1, 1, 8), 8)]:
        placed = jax.device_put(x, P.data_sharding(P.make_mesh(P.MeshConfig(shape))))
        assert {s.data.shape for s in placed.addressable_shards} == {(rows, 5)}, shape


@pytest.mark.parametrize(
    "logical, shape, split",
    [
        (P.HEADS, (2, 1, 4), (("tensor",), 4)),
        (P.EMBED, (2, 4, 1), (("fsdp",), 4)),
        (P.BATCH, (2, 4, 1), (("data", "fsdp"), 8)),
        (P.HEAD_DIM, (1, 2, 4), ((), 1)),
        ("not_in_the_table", (1, 2, 4), ((), 1)),
    ],
)
def test_mesh_split_reads_the_rules_table(logical, shape, split):
    assert P.mesh_split(logical, P.make_mesh(P.MeshConfig(shape))) == split
