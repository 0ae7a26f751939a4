"""Exact import/export of Hugging Face checkpoints (safetensors only).

    cfg, params = load_hf_params(hf_dir, dtype="bfloat16")   # numpy param tree
    save_hf(cfg, params, out_dir)        # config.json + model.safetensors (sharded if big),
                                         # into a new or empty folder only

Import streams one tensor at a time with `safetensors.safe_open`, writing each into
preallocated stacked `[layers, ...]` arrays (the assignment casts), so peak host memory
is the model in the target dtype plus one tensor (two while a transposed one is
reshaped). Pickle checkpoints (`*.bin`, `*.pt`) are refused: loading
a pickle can execute arbitrary code.

Name mapping (HF weights are [out, in]; ours are [in, ...out] einsum kernels)::

    BLOOM (`transformer.` prefix optional)       ours
    word_embeddings.weight [V, D]                embed/embedding
    word_embeddings_layernorm.{weight,bias}      embed_norm/{scale,bias}
    h.N.input_layernorm                          layers/attn_norm
    h.N.self_attention.query_key_value [3D, D]   layers/attn/qkv_kernel [D, H, 3, Hd]
    h.N.self_attention.dense [D, D]              layers/attn/out_kernel [H, Hd, D]
    h.N.post_attention_layernorm                 layers/mlp_norm
    h.N.mlp.dense_h_to_4h / dense_4h_to_h        layers/mlp/up_* / down_*
    ln_f                                         final_norm

    Llama / Qwen2                                ours
    model.embed_tokens.weight                    embed/embedding
    model.layers.N.input_layernorm.weight        layers/attn_norm/scale
    model.layers.N.self_attn.{q,k,v}_proj        layers/attn/{q,k,v}_kernel [D, H|K, Hd] (+bias)
    model.layers.N.self_attn.o_proj              layers/attn/out_kernel [H, Hd, D]
    model.layers.N.post_attention_layernorm      layers/mlp_norm/scale
    model.layers.N.mlp.{gate,up,down}_proj       layers/mlp/{gate,up,down}_kernel
    model.norm.weight                            final_norm/scale
    lm_head.weight [V, D]                        lm_head/kernel [D, V] (untied only)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import re

import ml_dtypes
import numpy as np

from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models.config import ConfigError, ModelConfig

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtypes the weights may be stored in (converted exactly to the target dtype).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# Buffers older Llama checkpoints saved with the weights (recomputed from the config).
IGNORED_HF_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


class CheckpointFormatError(ValueError):
    """An HF directory we refuse or cannot map (pickle files, missing tensors...)."""


def np_dtype(name: str) -> np.dtype:
    """Numpy dtype by name, with bfloat16 from ml_dtypes."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor <-> one of our parameters (per layer when `layered`)."""

    hf: str  # HF name; "{i}" stands for the layer index
    ours: tuple[str, ...]
    transpose: bool  # HF [out, in] weights are transposed into [in, ...] kernels

    @property
    def layered(self) -> bool:
        return "{i}" in self.hf


def name_map(cfg: ModelConfig) -> list[Entry]:
    """The full HF <-> ours mapping for `cfg` (HF names as transformers saves them)."""
    E = Entry
    if cfg.family == "bloom":
        t, h = "transformer.", "transformer.h.{i}."
        entries = [
            E(t + "word_embeddings.weight", ("embed", "embedding"), False),
            E(t + "word_embeddings_layernorm.weight", ("embed_norm", "scale"), False),
            E(t + "word_embeddings_layernorm.bias", ("embed_norm", "bias"), False),
            E(t + "ln_f.weight", ("final_norm", "scale"), False),
            E(t + "ln_f.bias", ("final_norm", "bias"), False),
        ]
        per_layer = [
            ("input_layernorm.weight", ("attn_norm", "scale"), False),
            ("input_layernorm.bias", ("attn_norm", "bias"), False),
            ("self_attention.query_key_value.weight", ("attn", "qkv_kernel"), True),
            ("self_attention.query_key_value.bias", ("attn", "qkv_bias"), False),
            ("self_attention.dense.weight", ("attn", "out_kernel"), True),
            ("self_attention.dense.bias", ("attn", "out_bias"), False),
            ("post_attention_layernorm.weight", ("mlp_norm", "scale"), False),
            ("post_attention_layernorm.bias", ("mlp_norm", "bias"), False),
            ("mlp.dense_h_to_4h.weight", ("mlp", "up_kernel"), True),
            ("mlp.dense_h_to_4h.bias", ("mlp", "up_bias"), False),
            ("mlp.dense_4h_to_h.weight", ("mlp", "down_kernel"), True),
            ("mlp.dense_4h_to_h.bias", ("mlp", "down_bias"), False),
        ]
    else:
        h = "model.layers.{i}."
        entries = [
            E("model.embed_tokens.weight", ("embed", "embedding"), False),
            E("model.norm.weight", ("final_norm", "scale"), False),
        ]
        if not cfg.tie_embeddings:
            entries.append(E("lm_head.weight", ("lm_head", "kernel"), True))
        per_layer = [
            ("input_layernorm.weight", ("attn_norm", "scale"), False),
            ("post_attention_layernorm.weight", ("mlp_norm", "scale"), False),
            ("self_attn.o_proj.weight", ("attn", "out_kernel"), True),
            ("mlp.gate_proj.weight", ("mlp", "gate_kernel"), True),
            ("mlp.up_proj.weight", ("mlp", "up_kernel"), True),
            ("mlp.down_proj.weight", ("mlp", "down_kernel"), True),
        ]
        for p in "qkv":
            per_layer.append((f"self_attn.{p}_proj.weight", ("attn", f"{p}_kernel"), True))
            if cfg.qkv_bias:
                per_layer.append((f"self_attn.{p}_proj.bias", ("attn", f"{p}_bias"), False))
    entries += [E(h + name, ("layers", *ours), tr) for name, ours, tr in per_layer]
    return entries


def _param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Our parameter shapes by path, without jax (mirrors decoder.py's tree)."""
    d, n, h, k, hd, f, v = (
        cfg.hidden,
        cfg.layers,
        cfg.heads,
        cfg.kv_heads,
        cfg.head_dim,
        cfg.mlp_dim,
        cfg.vocab_size,
    )
    shapes = {
        ("embed", "embedding"): (v, d),
        ("lm_head", "kernel"): (d, v),
        ("attn", "qkv_kernel"): (d, h, 3, hd),
        ("attn", "qkv_bias"): (h, 3, hd),
        ("attn", "out_kernel"): (h, hd, d),
        ("attn", "out_bias"): (d,),
        ("attn", "q_kernel"): (d, h, hd),
        ("attn", "k_kernel"): (d, k, hd),
        ("attn", "v_kernel"): (d, k, hd),
        ("attn", "q_bias"): (h, hd),
        ("attn", "k_bias"): (k, hd),
        ("attn", "v_bias"): (k, hd),
        ("mlp", "up_kernel"): (d, f),
        ("mlp", "gate_kernel"): (d, f),
        ("mlp", "up_bias"): (f,),
        ("mlp", "down_kernel"): (f, d),
        ("mlp", "down_bias"): (d,),
    }

    def shape(path):
        if path[0] == "layers":
            inner = path[1:]
            if inner[0].endswith("_norm"):
                return (n, d)
            return (n, *shapes[inner])
        if path[0].endswith("_norm"):
            return (d,)
        return shapes[path]

    return {e.ours: shape(e.ours) for e in name_map(cfg)}


def hf_shape(entry: Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of `entry`'s HF tensor for our (per-layer) parameter `shape`: torch's
    [out, in] for kernels, flat for norms and biases ([H, 3, Hd] is HF's fused order)."""
    if not entry.transpose:
        return tuple(shape) if entry.ours[-1] == "embedding" else (math.prod(shape),)
    if entry.ours[-1] == "out_kernel":  # [H, Hd, D]: inputs are the (head, dim) pairs
        return shape[-1], math.prod(shape[:-1])
    return math.prod(shape[1:]), shape[0]  # [D, ...outputs]


def to_ours(t: np.ndarray, entry: Entry, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our layout `shape` (without the layers axis), e.g. [out, in] ->
    [hidden, heads, head_dim]. Its shape must be HF's exactly, as transformers checks: a
    transposed [in, out] has the right size but would load scrambled."""
    want = hf_shape(entry, shape)
    if t.shape != want:
        raise CheckpointFormatError(f"has shape {t.shape}, config.json's model needs {want}")
    return (t.T if entry.transpose else t).reshape(shape)


# ----------------------------------------------------------------------------- import


def read_json_object(path: pathlib.Path) -> dict:
    """A JSON object file; CheckpointFormatError "path:line: not valid JSON (why)" otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise CheckpointFormatError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _safetensors_files(hf_dir: pathlib.Path) -> list[pathlib.Path]:
    index = hf_dir / INDEX_FILE
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise CheckpointFormatError(f"{index}: no 'weight_map' object of file names")
        shards = sorted(set(weight_map.values()))
        for name in shards:
            if not (hf_dir / name).is_file():
                raise CheckpointFormatError(f"{index}: lists {name}, which is not in {hf_dir}")
        # transformers loads a model.safetensors in preference to the index: one the index
        # does not list means two exports are mixed, and we cannot tell which is stale.
        # (Other unlisted files, e.g. some repos' consolidated.safetensors, are not read.)
        single = "model.safetensors"
        if (hf_dir / single).is_file() and single not in weight_map.values():
            raise CheckpointFormatError(
                f"{hf_dir}: {INDEX_FILE} does not list {single}: two exports are mixed "
                "here; remove the stale files"
            )
        return [hf_dir / name for name in shards]
    if (hf_dir / "model.safetensors").is_file():
        # What transformers loads without an index; other *.safetensors beside it (an
        # older export, an adapter) are not read.
        return [hf_dir / "model.safetensors"]
    files = sorted(hf_dir.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointFormatError(
            f"{hf_dir}: only pickle checkpoints found ({', '.join(pickles)}). They are refused "
            "because unpickling can execute arbitrary code. Convert them once, in an "
            'environment you trust, with: python -c "from transformers import '
            "AutoModelForCausalLM as M; M.from_pretrained('DIR').save_pretrained("
            "'OUT', safe_serialization=True)\""
        )
    raise CheckpointFormatError(f"{hf_dir}: no *.safetensors files found")


def read_hf_config(hf_dir) -> ModelConfig:
    """ModelConfig from `<hf_dir>/config.json` (ConfigError names unsupported types)."""
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.exists():
        raise CheckpointFormatError(f"{path}: not found (is {hf_dir} a HF model directory?)")
    try:
        return model_config.from_hf_config(read_json_object(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


@contextlib.contextmanager
def _damaged_file_errors(path: pathlib.Path):
    """safetensors' errors (a truncated download, a file of another format) as one line."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        raise CheckpointFormatError(f"{path}: damaged safetensors file ({e})") from None


def load_hf_params(hf_dir, dtype: str | None = None) -> tuple[ModelConfig, dict]:
    """Reads a HF BLOOM / Llama / Qwen2 directory into (cfg, nested dict of numpy arrays).

    dtype: parameter dtype ("float32", "bfloat16", "float16"); default float32, whatever
    the checkpoint's torch_dtype (exact, and never a silent float16 compute dtype).
    The returned cfg has `param_dtype` and `dtype` (compute) set to it.
    """
    from safetensors import safe_open

    hf_dir = pathlib.Path(hf_dir)
    cfg = read_hf_config(hf_dir)
    dtype = dtype or "float32"
    if dtype not in model_config.DTYPES:
        raise ConfigError(f"dtype {dtype!r}: must be one of {model_config.DTYPES}")
    cfg = dataclasses.replace(cfg, param_dtype=dtype, dtype=dtype)
    target = np_dtype(dtype)

    entries = name_map(cfg)
    shapes = _param_shapes(cfg)
    by_pattern = []
    for e in entries:
        # Original bigscience files were saved from BloomModel, without "transformer.".
        pattern = re.escape(e.hf).replace(re.escape("{i}"), r"(\d+)")
        if e.hf.startswith("transformer."):
            pattern = r"(?:transformer\.)?" + pattern[len(re.escape("transformer.")) :]
        by_pattern.append((re.compile(pattern + "$"), e))
    arrays = {e.ours: np.empty(shapes[e.ours], target) for e in entries}
    filled: dict[tuple[tuple[str, ...], int], str] = {}  # (ours, layer) -> "file: key"

    unexpected = []
    tied_head_file = None  # a saved copy of a tied head: checked below, then dropped
    for path in _safetensors_files(hf_dir):
        with _damaged_file_errors(path), safe_open(str(path), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                match = next(((m, e) for r, e in by_pattern if (m := r.fullmatch(key))), None)
                if match is None:
                    if key == "lm_head.weight" and cfg.tie_embeddings:
                        tied_head_file = path
                    elif not IGNORED_HF_KEYS.match(key):
                        unexpected.append(key)
                    continue
                m, e = match
                layer = int(m.group(1)) if e.layered else -1
                if layer >= cfg.layers:
                    unexpected.append(key)
                    continue
                if (e.ours, layer) in filled:  # the later one would silently win
                    raise CheckpointFormatError(
                        f"{path}: {key}: the same tensor is also in {filled[e.ours, layer]}; "
                        "two exports are mixed here: remove the stale files"
                    )
                filled[e.ours, layer] = f"{path.name}: {key}"
                stored = f.get_slice(key).get_dtype()
                if stored not in FLOAT_DTYPES:  # FP8, int8 (quantized) ... or an index
                    raise CheckpointFormatError(
                        f"{path}: {key}: stored as {stored}; only {', '.join(FLOAT_DTYPES)} "
                        "weights can be read (a quantized checkpoint? use the unquantized one)"
                    )
                shape = shapes[e.ours][1:] if e.layered else shapes[e.ours]
                try:
                    value = to_ours(f.get_tensor(key), e, shape)
                except CheckpointFormatError as err:
                    raise CheckpointFormatError(f"{path}: {key}: {err}") from None
                if e.layered:
                    arrays[e.ours][layer] = value
                else:
                    arrays[e.ours][...] = value
    if unexpected:
        raise CheckpointFormatError(
            f"{hf_dir}: tensors not part of a {cfg.hf_model_type} model: {unexpected[:10]}"
        )
    missing = [
        e.hf.format(i=i)
        for e in entries
        for i in (range(cfg.layers) if e.layered else [-1])
        if (e.ours, i) not in filled
    ]
    if missing:
        raise CheckpointFormatError(f"{hf_dir}: missing tensors {missing[:10]}")
    if tied_head_file is not None:
        _check_tied_head(tied_head_file, arrays[("embed", "embedding")], cfg)

    params: dict = {}
    for path, value in arrays.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return cfg, params


def _check_tied_head(path: pathlib.Path, embedding: np.ndarray, cfg: ModelConfig) -> None:
    """A tied model's file may still hold `lm_head.weight` [V, D]: it must be the
    embedding (in the target dtype), or config.json's tie_word_embeddings is wrong and
    dropping the head would silently change the model."""
    from safetensors import safe_open

    with _damaged_file_errors(path), safe_open(str(path), framework="numpy") as f:
        head = f.get_tensor("lm_head.weight")
    if head.shape != embedding.shape or not np.array_equal(head.astype(embedding.dtype), embedding):
        # Untying is no fix for a BLOOM: we map BLOOM with the embedding as its head only.
        fix = "set tie_word_embeddings to false there"
        if cfg.family == "bloom":
            fix = "a BLOOM with an untied LM head is not supported"
        raise CheckpointFormatError(
            f"{path}: lm_head.weight differs from the input embedding, but config.json ties "
            f"them (tie_word_embeddings true or left out for this model_type): {fix}"
        )


# ----------------------------------------------------------------------------- export

# What makes a folder a HF model (`save_hf` refuses to write into one).
MODEL_FILE_PATTERNS = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
)


def check_output_dir(out_dir, label: str = "") -> pathlib.Path:
    """`out_dir` as a Path if a new export may go there (a folder without model files, or
    a path to create); CheckpointFormatError otherwise. Writing into another export would
    mix two models: its shard index would outlive a new single-file export, and readers
    disagree on which one wins. label: how messages name the folder (e.g. "--output")."""
    out = pathlib.Path(out_dir)
    where = f"{label} {out}" if label else str(out)
    if out.exists() and not out.is_dir():
        raise CheckpointFormatError(f"{where} is a file, not a folder")
    found = sorted({p.name for pattern in MODEL_FILE_PATTERNS for p in out.glob(pattern)})
    if found:
        raise CheckpointFormatError(
            f"{where} already holds a model ({', '.join(found)}); choose an empty folder"
        )
    return out


def hf_tensors(cfg: ModelConfig, params, dtype: str | None = None):
    """Yields (hf_name, numpy tensor) for every HF weight, one at a time."""
    target = np_dtype(dtype) if dtype else None
    for e in name_map(cfg):
        node = params
        for part in e.ours:
            node = node[part]
        stacked = np.asarray(node)
        for i in range(cfg.layers) if e.layered else [None]:
            a = stacked[i] if i is not None else stacked
            want = hf_shape(e, a.shape)
            a = a.reshape(want[::-1]).T if e.transpose else a.reshape(want)
            if target is not None:
                a = a.astype(target)
            yield e.hf.format(i=i), np.ascontiguousarray(a)


def save_hf(
    cfg: ModelConfig,
    params,
    out_dir,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> pathlib.Path:
    """Writes `config.json` + `model.safetensors` (or shards + index) to `out_dir`,
    which must hold no model yet (see `check_output_dir`).

    params: our param tree (numpy or fully addressable jax arrays). dtype: the saved
    dtype (default: each parameter's own). Returns out_dir.
    """
    from safetensors.numpy import save_file

    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = model_config.to_hf_config(cfg)
    if dtype:
        hf_cfg["torch_dtype"] = dtype
    else:
        leaf = np.asarray(params["embed"]["embedding"][:1])
        hf_cfg["torch_dtype"] = "bfloat16" if leaf.dtype == ml_dtypes.bfloat16 else leaf.dtype.name
    # Each shard is written as soon as it is full (temporary name, renamed once the
    # shard count is known), so at most one shard of tensors is held in memory.
    # config.json comes last and a failure removes what was written, so a failed
    # export (disk full, a missing parameter) leaves no folder that blocks a retry.
    metadata = {"format": "pt"}
    written: list[tuple[pathlib.Path, list[str]]] = []
    current: dict[str, np.ndarray] = {}
    size = total = 0

    def flush():
        tmp = out / f"model-{len(written) + 1:05d}.partial.safetensors"
        written.append((tmp, list(current)))
        save_file(current, str(tmp), metadata=metadata)

    try:
        for name, tensor in hf_tensors(cfg, params, dtype):
            if current and size + tensor.nbytes > max_shard_bytes:
                flush()
                current, size = {}, 0
            current[name] = tensor
            size += tensor.nbytes
            total += tensor.nbytes
        if current:
            flush()
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    if len(written) == 1:
        written[0][0].replace(out / "model.safetensors")
    else:
        weight_map = {}
        for n, (tmp, names) in enumerate(written, 1):
            fname = f"model-{n:05d}-of-{len(written):05d}.safetensors"
            tmp.replace(out / fname)
            weight_map.update(dict.fromkeys(names, fname))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    return out
