"""`DataConfig`: which data a run reads, how long its rows are, how many per step, in
which order. Apart from `input_pipeline` (SeqIO and TensorFlow) so that importing
train.py, which registers it with gin, loads no TensorFlow: those seconds came before
main's Ctrl-C handling, and a Ctrl-C in them printed a trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

from ecomgpt_jax.ecominstruct import reader
from ecomgpt_jax.ecominstruct.reader import DataError
from ecomgpt_jax.values import is_integer


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data, how long, how many rows per step, in which order.

    mixture_or_task_name: a SeqIO mixture or task; a task folder name
      (EN-ABSA-CLS-review_topic_category) is read as its task (ecom:EN:ABSA:CLS:...).
    task_feature_lengths: {"inputs": prompt tokens, "targets": answer tokens};
      a packed row is `inputs + targets` tokens long.
    num_shards: logical data shards (None: one per process). Must divide
      `global_batch_size`.
    """

    mixture_or_task_name: str = "ecom_instruct_held_in"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 96, "targets": 32}
    )
    global_batch_size: int = 8
    split: str = "train"
    seed: int = 0
    shuffle: bool = True
    pack: bool = True
    num_shards: int | None = None

    def __post_init__(self):
        name = self.mixture_or_task_name
        if isinstance(name, str):
            # A task folder name (what eval and the prediction files use) names its task.
            with contextlib.suppress(DataError):
                reader.parse_task_name(name)
                object.__setattr__(self, "mixture_or_task_name", reader.seqio_task_name(name))
        # Checked here so every entry point gets one line instead of an IndexError or
        # KeyError from deep inside the pipeline (or, for a 0 length, silent empty rows).
        lengths = self.task_feature_lengths
        if not (
            isinstance(lengths, Mapping)
            and set(lengths) == {"inputs", "targets"}
            and all(positive_int(v) for v in lengths.values())
        ):
            raise DataError(
                "TASK_FEATURE_LENGTHS needs keys 'inputs' and 'targets' (positive ints), "
                f"got {lengths!r}"
            )
        for field in ("shuffle", "pack"):
            if not isinstance(getattr(self, field), bool):  # 'False' would count as true
                raise DataError(
                    f"DataConfig.{field} must be True or False, got {getattr(self, field)!r}"
                )
        if not positive_int(self.global_batch_size):
            raise DataError(f"BATCH_SIZE must be an integer >= 1, got {self.global_batch_size!r}")
        seed = self.seed
        if not (is_integer(seed) and seed >= 0):
            # None would draw a fresh order each run: no resume could repeat it.
            raise DataError(f"DataConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.num_shards is not None and not positive_int(self.num_shards):
            raise DataError(
                f"DataConfig.num_shards must be None or an integer >= 1, got {self.num_shards!r}"
            )
        if self.num_shards is not None and self.global_batch_size % self.num_shards:
            raise DataError(
                f"BATCH_SIZE {self.global_batch_size} is not divisible by "
                f"DataConfig.num_shards {self.num_shards}"
            )

    @property
    def sequence_length(self) -> int:
        return int(self.task_feature_lengths["inputs"]) + int(self.task_feature_lengths["targets"])


def positive_int(value) -> bool:
    return is_integer(value) and value >= 1
