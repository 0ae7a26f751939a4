"""The device mesh and the one table that maps logical axis names to it.

Every parameter and key activation in the model carries *logical* axis names
(the constants below). Sharding is decided in exactly one place, `RULES`,
which maps each logical name to mesh axes of the 3-axis mesh
`(data, fsdp, tensor)`. Data parallelism, FSDP, tensor parallelism and their
mixes are therefore mesh shapes, never model edits:

    (8, 1, 1)  pure data parallel       (1, 8, 1)  FSDP (ZeRO-3 style)
    (1, 1, 8)  tensor parallel          (2, 2, 2)  all three

This module needs only jax and flax (no TensorFlow, SeqIO or gin).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ecomgpt_jax.values import is_integer

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis names of parameters.
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
QKV = "qkv"  # BLOOM's fused query/key/value axis (size 3)
LAYERS = "layers"
# Logical axis names of activations.
BATCH = "act_batch"
LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

# The one rules table. Parameters are sharded over `fsdp` along their model
# dimension (gathered per layer inside the scan) and over `tensor` along
# heads / MLP / vocabulary (Megatron-style column/row split). Activations are
# sharded over both batch axes; their feature dimension follows the tensor split.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (HEAD_DIM, None),
    (QKV, None),
    (LAYERS, None),
)
# The mesh axes a batch dimension is split over (inputs, microbatches, decoded rows).
BATCH_MESH_AXES: tuple[str, ...] = dict(RULES)[BATCH]


class MeshError(ValueError):
    """A mesh shape that cannot be laid over the available devices."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the `(data, fsdp, tensor)` axes; one of them may be -1 ("the rest")."""

    shape: tuple[int, int, int] = (-1, 1, 1)

    def __post_init__(self):
        # Exact ints only (a list from gin is fine): int() would make 2.7 a 2 and True a 1
        # without a word. TrainConfig checks MESH_SHAPE through this too.
        shape = self.shape
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 3
            or not all(is_integer(s) for s in shape)
        ):
            raise MeshError(
                "MESH_SHAPE must be 3 integers (data, fsdp, tensor), one of them may be -1, "
                f"got {shape!r}"
            )
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Returns the concrete shape for `num_devices`, or raises MeshError."""
        shape = self.shape
        if shape.count(-1) > 1:
            raise MeshError(f"MESH_SHAPE {shape}: at most one axis may be -1")
        if any(s == 0 or s < -1 for s in shape):
            raise MeshError(f"MESH_SHAPE {shape}: sizes must be positive or -1")
        known = math.prod(s for s in shape if s != -1)
        if -1 in shape:
            if num_devices % known:
                raise MeshError(
                    f"MESH_SHAPE {shape}: the fixed axes ({known}) do not divide the "
                    f"{num_devices} available devices"
                )
            shape = tuple(num_devices // known if s == -1 else s for s in shape)
        if math.prod(shape) != num_devices:
            raise MeshError(
                f"MESH_SHAPE {shape} needs {math.prod(shape)} devices but {num_devices} "
                "are available; use -1 for one axis to take the rest"
            )
        return shape  # type: ignore[return-value]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the `(data, fsdp, tensor)` mesh over `devices` (default: all devices).

    `tensor` is the fastest-varying axis so tensor-parallel groups sit on
    neighbouring devices (same host, fastest links).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - irregular topologies (CPU, odd counts): plain order.
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_sharding(logical_specs, mesh: Mesh):
    """Maps a pytree of logical PartitionSpecs to NamedShardings via `RULES`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a `[batch, ...]` array: batch split over `BATCH_MESH_AXES`."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    """How many ways the global batch is split (the product of `BATCH_MESH_AXES`)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_MESH_AXES)


def mesh_split(logical: str, mesh) -> tuple[tuple[str, ...], int]:
    """The mesh axes `RULES` splits the logical axis `logical` over, and into how many
    parts (1: not split). `mesh` needs only `.shape` (axis name -> size)."""
    axes = dict(RULES).get(logical)
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return axes, math.prod(mesh.shape[axis] for axis in axes)


def axis_rules():
    """Context manager that makes `RULES` active for `nn.with_logical_constraint`."""
    return nn.logical_axis_rules(RULES)
