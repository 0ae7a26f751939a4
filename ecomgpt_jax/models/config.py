"""Model configuration: one frozen dataclass, presets read from gin files, HF config mapping.

Two decoder families share one `ModelConfig`:

  "bloom"  BLOOM / BLOOMZ: embedding LayerNorm, ALiBi, fused QKV, GELU(tanh) MLP,
           biases everywhere, tied LM head.
  "llama"  Llama 2/3 and Qwen2/2.5: RMSNorm, RoPE (optionally Llama-3 scaled),
           SwiGLU MLP, grouped-query attention, no biases except optional q/k/v
           biases (`qkv_bias=True` is exactly what makes a Llama a Qwen2).

Presets are gin files, gin_configs/models/<name>.gin, each binding every field; gin
runs include them, `get_preset(name)` reads them without gin. Override fields with
`--gin.ModelConfig.dtype="'bfloat16'"` in a run, or `dataclasses.replace(cfg,
dtype="bfloat16")` in code. Dtypes are strings ("float32", "bfloat16") so the config
serialises to JSON and gin can bind them. This module imports neither jax nor gin.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import os
import pathlib
import re
import tokenize
from collections.abc import Mapping
from typing import Any

from ecomgpt_jax.values import is_integer, is_number

FAMILIES = ("bloom", "llama")
DTYPES = ("float32", "bfloat16", "float16")
LOGITS_DTYPES = ("float32", "bfloat16")  # float16 logits would overflow past 65504
# "none" = no rematerialisation; "full" = save nothing (recompute the whole layer in
# the backward pass); any other name is looked up in `jax.checkpoint_policies`.
# Presets choose by size: a layer's activations at 8 x 2048 tokens in bf16 are ~1 GB for
# 1B models, so up to bloom-560m nothing is recomputed (fastest); bloomz-1b1 to 3B keep
# the projection matmul outputs ("dots_with_no_batch_dims_saveable": ~5% more FLOPs,
# most of the memory back); 7-8B models save nothing ("full": ~33% more FLOPs).
REMAT_POLICIES = (
    "none",
    "full",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "nothing_saveable",
    "everything_saveable",
)
ATTENTION_IMPLS = ("xla", "cudnn", "splash")


# Fields that choose how a model runs, not what it computes: `from_hf_config` leaves
# them at their defaults, presets may set them.
RUNTIME_FIELDS = (
    "param_dtype",
    "dtype",
    "logits_dtype",
    "remat_policy",
    "scan_layers",
    "attention_impl",
)


class ConfigError(ValueError):
    """An unusable model configuration (unknown preset, unsupported HF architecture...)."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style RoPE frequency scaling (HF `rope_type: "llama3"`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a decoder's architecture and numerics."""

    family: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_dim: int
    norm_eps: float
    rope_theta: float = 10000.0  # llama family only
    rope_scaling: RopeScaling | None = None  # llama family only
    qkv_bias: bool = False  # llama family only (Qwen2: True); BLOOM always has biases
    tie_embeddings: bool = True
    max_positions: int = 2048  # informational for BLOOM (ALiBi has no position table)
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    # What the LM-head matmul writes its logits in (float32 accumulation either way;
    # logits are returned, and the loss's softmax statistics computed, in float32).
    # "bfloat16" rounds them first, as MaxText's default and PyTorch autocast do, and
    # halves the loss's memory traffic over [B, chunk, V] logits: on an H100, bloom-560m's
    # fused LM head + loss (8 x 2048) took 49.1 ms against 57.0 (same process; the whole
    # step 0.1542 s against 0.1634 in two runs; benchmarks/RESULTS.md, 2026-11-27 14:43-4).
    # The chunked loss passes the logits' gradient through the rounding unrounded; the
    # unchunked one (loss_chunk_size 0, autodiff) rounds it to bfloat16 too.
    logits_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = True  # False = same params, layer loop fully unrolled
    # "cudnn": jax.nn.dot_product_attention on GPU (packed segments must be runs of
    # slots with positions counting up by one, see Decoder); "splash": the Pallas TPU
    # kernel (RoPE family only, see models/splash.py)
    attention_impl: str = "xla"
    bos_id: int | None = None
    eos_id: int | None = None
    # HF's further end-of-sequence ids (Llama 3.1 Instruct lists three): kept so that an
    # export stops where the original did. Decoding stops at the vocabulary's EOS.
    extra_eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None

    def __post_init__(self):
        def bad(field, why):
            raise ConfigError(f"ModelConfig.{field}={getattr(self, field)!r}: {why}")

        if self.family not in FAMILIES:
            bad("family", f"must be one of {FAMILIES}")
        for field in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "mlp_dim"):
            value = getattr(self, field)
            # Overrides arrive from gin and JSON: a string or float here is a typo, not a size.
            if not is_integer(value) or value <= 0:
                bad(field, "must be a positive integer")
        for field in ("norm_eps", "rope_theta"):
            if not is_number(getattr(self, field)) or getattr(self, field) <= 0:
                bad(field, "must be a positive number")
        if not is_integer(self.max_positions) or self.max_positions <= 0:
            bad("max_positions", "must be a positive integer")
        for field in ("qkv_bias", "tie_embeddings", "scan_layers"):
            # gin and JSON take 'False' as written, and a non-empty string is true.
            if not isinstance(getattr(self, field), bool):
                bad(field, "must be True or False")
        for field in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, field)
            if value is not None and not is_integer(value):  # (old Llama configs: pad -1)
                bad(field, "must be a token id (an integer) or None")
        if self.heads % self.kv_heads:
            bad("kv_heads", f"must divide heads={self.heads}")
        if self.family == "bloom":
            if self.kv_heads != self.heads:
                bad("kv_heads", "BLOOM has no grouped-query attention (kv_heads == heads)")
            if self.heads * self.head_dim != self.hidden:
                bad("head_dim", f"BLOOM needs heads * head_dim == hidden ({self.hidden})")
            if not self.tie_embeddings:
                bad("tie_embeddings", "BLOOM always ties the LM head to the embeddings")
        if self.head_dim % 2 and self.family == "llama":
            bad("head_dim", "RoPE needs an even head_dim")
        for field in ("param_dtype", "dtype"):
            if getattr(self, field) not in DTYPES:
                bad(field, f"must be one of {DTYPES}")
        if self.logits_dtype not in LOGITS_DTYPES:
            bad("logits_dtype", f"must be one of {LOGITS_DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            bad("remat_policy", f"must be one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            bad("attention_impl", f"must be one of {ATTENTION_IMPLS}")
        if self.attention_impl == "splash" and self.family == "bloom":
            bad("attention_impl", "splash has no additive bias for BLOOM's ALiBi: use xla or cudnn")
        if isinstance(self.extra_eos_ids, list):  # from JSON or gin
            object.__setattr__(self, "extra_eos_ids", tuple(self.extra_eos_ids))
        if not (
            isinstance(self.extra_eos_ids, tuple) and all(is_integer(i) for i in self.extra_eos_ids)
        ):
            bad("extra_eos_ids", "must be a tuple of token ids")
        if isinstance(self.rope_scaling, Mapping):
            # Convenience (gin, JSON): accept a dict and freeze it.
            try:
                object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
            except TypeError:
                names = [f.name for f in dataclasses.fields(RopeScaling)]
                bad("rope_scaling", f"keys must be among {names}")

    @property
    def summary(self) -> str:
        """E.g. "bloom, 2 layers, width 96, float32" (the entry points' `model:` line)."""
        return f"{self.family}, {self.layers} layers, width {self.hidden}, {self.dtype}"

    @property
    def hf_model_type(self) -> str:
        """The HF `model_type` this config exports as: bloom, qwen2 or llama."""
        if self.family == "bloom":
            return "bloom"
        return "qwen2" if self.qkv_bias else "llama"

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; `from_json_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config has unknown fields {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------- presets

# One small gin file per model, binding every ModelConfig field (T5X style), is the only
# definition of a preset. Train and eval read them with gin; benchmarks and converters,
# which must run without gin (GPU machines often lack it), read them with `read_model_file`.
MODELS_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin_configs" / "models"


def _model_file_error(path: pathlib.Path, line: int | None, why: str) -> ConfigError:
    return ConfigError(f"{path}{f':{line}' if line else ''}: {why}")


class _NotLiteral(Exception):
    pass


def _ops(segment: str) -> list[str]:
    """The operator tokens of a source segment (strings and numbers skipped)."""
    tokens = tokenize.generate_tokens(io.StringIO(segment).readline)
    return [t.string for t in tokens if t.type == tokenize.OP]


def _parenthesised(segment: str) -> bool:
    """Whether `segment` is one parenthesised group: `(1, 2)`, not `(1), (2)` or `1, 2`."""
    depth = 0
    ops = _ops(segment)
    for i, op in enumerate(ops):
        depth += (op in "([{") - (op in ")]}")
        if depth == 0:
            return ops[0] == "(" and i == len(ops) - 1
    return False


def _literal(node: ast.expr, text: str) -> Any:
    """The value of a gin literal, from its Python AST: a number (optionally negative),
    a string, True/False/None, or a parenthesised tuple, a list or a dict of literals
    with constant keys. Anything else (an expression, a set, `1, 2` without
    parentheses) is refused, where Python would accept some of it and gin would not;
    a few things gin takes are refused too (dict keys that are tuples or negative)."""
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, bool | int | float | str):
            return node.value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        number = isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)
        if number and _ops(ast.get_source_segment(text, node)) == ["-"]:  # not -(1)
            return -node.operand.value
    elif isinstance(node, ast.List):
        return [_literal(e, text) for e in node.elts]
    elif isinstance(node, ast.Tuple):
        if _parenthesised(ast.get_source_segment(text, node)):
            return tuple(_literal(e, text) for e in node.elts)
    elif isinstance(node, ast.Dict):
        keys = [k for k in node.keys if isinstance(k, ast.Constant)]
        if len(keys) == len(node.keys):  # no **spread
            return {
                _literal(k, text): _literal(v, text) for k, v in zip(keys, node.values, strict=True)
            }
    raise _NotLiteral


def read_model_file(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a model gin file binds, read without gin.

    A model file holds `ModelConfig.<field> = <literal>` bindings and `NAME = <literal>`
    macros (VOCABULARY, VOCABULARY_PATH) only, one per line: gin reads those as this
    does (tests/test_config.py checks every file against gin). Anything else raises
    ConfigError naming the file and line, even where gin would accept it (scopes,
    `models.ModelConfig`, references, includes).
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except OSError as e:
        raise _model_file_error(path, None, f"cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise _model_file_error(path, None, f"cannot read it ({e})") from None
    except SyntaxError as e:
        raise _model_file_error(path, e.lineno, f"not a model file ({e.msg})") from None
    lines = text.encode("utf-8").split(b"\n")  # as the AST counts lines and (byte) offsets
    fields = {}
    for node in tree.body:
        rest = lines[node.end_lineno - 1][node.end_col_offset :].strip()
        alone = not rest or rest.startswith(b"#")  # not `a = 1; b = 2`, `a = 1;`
        one = isinstance(node, ast.Assign) and len(node.targets) == 1  # not `a = b = 1`
        target = node.targets[0] if one and alone else None
        field = None
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            field = target.attr if target.value.id == "ModelConfig" else None
        if field is None and not isinstance(target, ast.Name):
            raise _model_file_error(
                path,
                node.lineno,
                "a model file holds `ModelConfig.<field> = <value>` bindings only, one per line",
            )
        try:
            value = _literal(node.value, text)
        except _NotLiteral:
            what = f"ModelConfig.{field}" if field else target.id
            raise _model_file_error(
                path, node.lineno, f"{what}: the value must be a literal"
            ) from None
        if field:  # macros (VOCABULARY, ...) are read by gin only
            fields[field] = value
    missing = sorted(f.name for f in dataclasses.fields(ModelConfig) if f.name not in fields)
    if missing:
        # Every field, so that a model file included after another replaces all of it.
        raise _model_file_error(path, None, f"binds no value for ModelConfig fields {missing}")
    try:
        return ModelConfig.from_json_dict(fields)
    except (ConfigError, TypeError) as e:
        raise _model_file_error(path, None, str(e)) from None


def preset_names() -> list[str]:
    """The presets: the stems of gin_configs/models/*.gin (e.g. "bloomz_1b1")."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.gin"))


@functools.cache
def get_preset(name: str) -> ModelConfig:
    """The ModelConfig of gin_configs/models/<name>.gin; "-" and "." in `name` read as
    "_", so "bloomz-1b1" and "qwen2.5-0.5b" name bloomz_1b1.gin and qwen2_5_0_5b.gin."""
    stem = re.sub(r"[-.]", "_", name)
    known = preset_names()
    if not known:  # gin_configs/ is not package data: presets need the repository
        raise ConfigError(f"model preset {name!r}: no model files in {MODELS_DIR}")
    if stem not in known:
        raise ConfigError(f"unknown model preset {name!r}; known: {known} ({MODELS_DIR})")
    return read_model_file(MODELS_DIR / f"{stem}.gin")


# ----------------------------------------------------------------------------- HF mapping


def _first_id(value):
    # HF allows a list of EOS ids (e.g. Llama 3.1 instruct); the first one is the canonical one.
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _later_ids(value) -> tuple[int, ...]:
    """The ids after the first of a HF id list (ModelConfig.extra_eos_ids)."""
    return tuple(int(i) for i in value[1:]) if isinstance(value, list | tuple) else ()


_REQUIRED = object()


def _hf_number(hf: Mapping, where: str, names, default: Any = _REQUIRED, kind=int, prefix=""):
    """config.json's value of the first of `names` it sets (null = not set), as a positive
    int (`kind=int`) or a float; `default` where none is set. ConfigError naming `where`
    and the field otherwise, not a KeyError, TypeError or division by zero later on."""
    names = (names,) if isinstance(names, str) else names
    name = next((n for n in names if hf.get(n) is not None), None)
    if name is None:
        if default is _REQUIRED:
            raise ConfigError(f"{where}: {prefix}{names[0]} is missing or null")
        return default
    value = hf[name]
    number = is_number(value)
    if kind is int and not (number and float(value).is_integer() and value > 0):
        raise ConfigError(f"{where}: {prefix}{name}={value!r}: must be a positive integer")
    if not number:
        raise ConfigError(f"{where}: {prefix}{name}={value!r}: must be a number")
    return kind(value)


def _rope_from_hf(hf: Mapping[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    """Reads RoPE settings from the transformers-5 `rope_parameters` or the legacy
    `rope_theta` + `rope_scaling` fields."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = _hf_number({**hf, **params}, where, "rope_theta", 10000.0, float)
    scaling = {**legacy, **params}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ConfigError(f"{where}: rope type {rope_type!r} is not supported (only llama3)")
    prefix = "rope_parameters." if params else "rope_scaling."
    factors = ("factor", "low_freq_factor", "high_freq_factor")
    return theta, RopeScaling(
        *(_hf_number(scaling, where, f, kind=float, prefix=prefix) for f in factors),
        _hf_number(scaling, where, "original_max_position_embeddings", prefix=prefix),
    )


def from_hf_config(hf: Mapping[str, Any]) -> ModelConfig:
    """Maps a HF `config.json` dict (BLOOM, Llama, Qwen2) to a ModelConfig.

    Raises ConfigError naming the `model_type`/`architectures` found when the
    architecture, or a feature of it, is not supported, or a field it needs is missing,
    null or not a (positive) number.
    """
    model_type = hf.get("model_type")
    found = f"model_type={model_type!r}, architectures={hf.get('architectures')!r}"
    where = f"config.json ({found})"
    number = functools.partial(_hf_number, hf, where)
    quantization = hf.get("quantization_config")
    if quantization:  # FP8 / GPTQ / AWQ weights: neither their dtypes nor their scales map
        method = quantization.get("quant_method") if isinstance(quantization, Mapping) else None
        raise ConfigError(
            f"{where}: a quantized checkpoint (quantization_config, quant_method={method!r}) "
            "is not supported; use the unquantized model"
        )
    ids = dict(
        bos_id=_first_id(hf.get("bos_token_id")),
        eos_id=_first_id(hf.get("eos_token_id")),
        extra_eos_ids=_later_ids(hf.get("eos_token_id")),
        pad_id=_first_id(hf.get("pad_token_id")),
    )
    if model_type == "bloom":
        if hf.get("apply_residual_connection_post_layernorm"):
            raise ConfigError(f"{where}: apply_residual_connection_post_layernorm is unsupported")
        if hf.get("tie_word_embeddings") is False:
            # Our BLOOM has no lm_head parameter: its head is always the embedding.
            raise ConfigError(
                f"{where}: tie_word_embeddings=false: a BLOOM with an untied LM head is not "
                "supported"
            )
        hidden = number(("hidden_size", "n_embed"), 64)
        heads = number(("n_head", "num_attention_heads"), 8)
        return ModelConfig(
            family="bloom",
            vocab_size=number("vocab_size"),
            hidden=hidden,
            layers=number(("n_layer", "num_hidden_layers"), 2),
            heads=heads,
            kv_heads=heads,
            head_dim=hidden // heads,
            mlp_dim=4 * hidden,
            norm_eps=number("layer_norm_epsilon", 1e-5, float),
            tie_embeddings=True,
            max_positions=number("seq_length", 2048),
            **ids,
        )
    if model_type in ("llama", "qwen2"):
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: hidden_act={act!r}, only silu is supported")
        if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
            raise ConfigError(f"{where}: attention_bias/mlp_bias are unsupported")
        if model_type == "qwen2" and hf.get("use_sliding_window"):
            raise ConfigError(f"{where}: use_sliding_window=true is unsupported")
        qwen2 = model_type == "qwen2"
        hidden = number("hidden_size")
        heads = number("num_attention_heads")
        # transformers' defaults for keys a config.json leaves out: Qwen2Config's
        # num_key_value_heads is 32 (null means heads), Llama's None; neither ties;
        # max_position_embeddings is 32768 for Qwen2, 2048 for Llama.
        kv_default = 32 if qwen2 and "num_key_value_heads" not in hf else heads
        theta, scaling = _rope_from_hf(hf, where)
        return ModelConfig(
            family="llama",
            vocab_size=number("vocab_size"),
            hidden=hidden,
            layers=number("num_hidden_layers"),
            heads=heads,
            kv_heads=number("num_key_value_heads", kv_default),
            head_dim=number("head_dim", hidden // heads),
            mlp_dim=number("intermediate_size"),
            norm_eps=number("rms_norm_eps", 1e-6, float),
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=qwen2,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_positions=number("max_position_embeddings", 32768 if qwen2 else 2048),
            **ids,
        )
    raise ConfigError(
        f"unsupported architecture in config.json ({found}); supported model_type values: "
        "bloom, llama, qwen2"
    )


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The HF `config.json` dict for `cfg` (loadable by transformers 4.4x and 5.x)."""
    common = dict(
        vocab_size=cfg.vocab_size,
        bos_token_id=cfg.bos_id,
        eos_token_id=[cfg.eos_id, *cfg.extra_eos_ids] if cfg.extra_eos_ids else cfg.eos_id,
        pad_token_id=cfg.pad_id,
        tie_word_embeddings=cfg.tie_embeddings,
        torch_dtype=cfg.param_dtype,
        use_cache=True,
    )
    if cfg.family == "bloom":
        if cfg.mlp_dim != 4 * cfg.hidden:
            # HF's BloomConfig has no MLP width (always 4 x hidden): exported, this model
            # would silently become another. (Checked here, not in ModelConfig, so that
            # runs saved with another width still load, train and evaluate.)
            raise ConfigError(
                f"ModelConfig.mlp_dim={cfg.mlp_dim}: a BLOOM export needs 4 * hidden "
                f"({4 * cfg.hidden}); HF's BloomConfig cannot say otherwise"
            )
        return dict(
            architectures=["BloomForCausalLM"],
            model_type="bloom",
            hidden_size=cfg.hidden,
            n_layer=cfg.layers,
            n_head=cfg.heads,
            layer_norm_epsilon=cfg.norm_eps,
            apply_residual_connection_post_layernorm=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            pretraining_tp=1,
            slow_but_exact=False,
            seq_length=cfg.max_positions,
            **common,
        )
    model_type = cfg.hf_model_type
    if model_type == "qwen2" and cfg.head_dim * cfg.heads != cfg.hidden:
        raise ConfigError("Qwen2 export needs head_dim * heads == hidden")
    rope_scaling = None
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope_scaling = dict(
            rope_type="llama3",
            factor=s.factor,
            low_freq_factor=s.low_freq_factor,
            high_freq_factor=s.high_freq_factor,
            original_max_position_embeddings=s.original_max_positions,
        )
    out = dict(
        architectures=["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
        model_type=model_type,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_positions,
        rms_norm_eps=cfg.norm_eps,
        # Both spellings: transformers 5 reads `rope_parameters`, 4.x reads the legacy pair.
        rope_theta=cfg.rope_theta,
        rope_scaling=rope_scaling,
        rope_parameters={
            **(rope_scaling or {"rope_type": "default"}),
            "rope_theta": cfg.rope_theta,
        },
        attention_dropout=0.0,
        **common,
    )
    if model_type == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.layers)
    else:
        out.update(attention_bias=False, mlp_bias=False)
    return out
