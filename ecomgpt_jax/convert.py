"""Convert between Hugging Face checkpoints and orbax parameter checkpoints.

    python -m ecomgpt_jax.convert hf-to-orbax --hf_dir DIR --output OUT [--dtype bfloat16]
        (default float32; the compute dtype in model_config.json is set to the same)
    python -m ecomgpt_jax.convert orbax-to-hf --checkpoint CKPT --output DIR
        [--tokenizer_dir DIR] [--dtype bfloat16] [--preset NAME | --model_config FILE]
        [--push_to_hub ORG/NAME [--private]]

hf-to-orbax writes::

    OUT/params/             orbax StandardCheckpointer PyTree of the parameters
                            (the tree documented in models/decoder.py)
    OUT/model_config.json   the ModelConfig (`ModelConfig.from_json_dict`)

`checkpointing.restore_params(OUT, abstract)` (and so training with an init
checkpoint, evaluation, and orbax-to-hf) reads it. orbax-to-hf accepts the same
paths `checkpointing.resolve_params_path` does (a converted directory, a training
run directory, a step directory); the model config comes from `--model_config`,
`--preset`, or the nearest `model_config.json` at or above the checkpoint. Where that
file exists, a --preset or --model_config must agree with it (run settings such as
dtypes and remat aside): only shapes are checked on restore, and a preset's eos id,
rope or norm settings would otherwise be exported as the model's.

OUT and CKPT may be local or in a bucket (`gs://...`); the Hugging Face side (HF_DIR,
orbax-to-hf --output) is a local folder (safetensors are memory-mapped). --hf_dir and
--tokenizer_dir may also name a hub repository, hf://ORG/NAME[@REVISION] (`hf_hub`),
downloaded into the Hugging Face cache first. orbax-to-hf
writes only into a new or empty folder: one that already holds a model (config.json,
safetensors, a shard index) is refused, since the two exports would mix.

Only safetensors are read: pickle files (`*.bin`) are refused because loading
them can execute code. Needs jax, orbax and safetensors (no TensorFlow or gin).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import sys

from ecomgpt_jax import hf_hub
from ecomgpt_jax.models import config as model_config
from ecomgpt_jax.models import hf_io
from ecomgpt_jax.models.config import ConfigError, ModelConfig

# Tokenizer files transformers writes/reads next to the weights.


def find_model_config(checkpoint) -> ModelConfig:
    """The model_config.json at or above `checkpoint`; ConfigError if there is none."""
    from ecomgpt_jax import checkpointing

    cfg = checkpointing.find_model_config(checkpoint)
    if cfg is None:
        raise ConfigError(
            f"{checkpoint}: no {checkpointing.MODEL_CONFIG_FILE} found at or above it; pass "
            "--preset or --model_config"
        )
    return cfg


def check_given_config(checkpoint, cfg: ModelConfig) -> None:
    """ConfigError where the checkpoint's own model_config.json (what it was trained or
    converted as) gives another architecture than `cfg` (--preset / --model_config)."""
    from ecomgpt_jax import checkpointing

    file = checkpointing.find_upwards(checkpoint, checkpointing.MODEL_CONFIG_FILE)
    if file is None:
        return
    stored = checkpointing.load_model_config(file)
    # The fields whose value would change what the export writes (config.json): run
    # settings and fields a family does not use (a BLOOM's rope_theta) differ harmlessly.
    written = model_config.to_hf_config(stored)

    def changes_export(field: str) -> bool:
        try:
            other = dataclasses.replace(stored, **{field: getattr(cfg, field)})
        except ConfigError:  # not valid alone (e.g. a width without its head_dim)
            return True
        return model_config.to_hf_config(other) != written

    differences = [
        f"{f} {getattr(stored, f)!r} -> {getattr(cfg, f)!r}"
        for f in (f.name for f in dataclasses.fields(ModelConfig))
        if f not in model_config.RUNTIME_FIELDS
        and getattr(stored, f) != getattr(cfg, f)
        and changes_export(f)
    ]
    if differences:
        raise ConfigError(
            f"the given model config differs from {file}, what the checkpoint holds: "
            f"{', '.join(differences)}; leave out --preset / --model_config to export it as "
            "it is, or edit or remove that file to override it"
        )


def check_orbax_output(output) -> None:
    """CheckpointFormatError where `output` cannot take a conversion: it holds params/
    already, or it is (inside) a file. Before the model is read or downloaded (minutes
    for a 7B one), not when it is written."""
    from ecomgpt_jax import checkpointing

    output = checkpointing.as_path(output)
    if (output / "params").exists():
        raise hf_io.CheckpointFormatError(
            f"{output / 'params'} already exists; choose another --output or delete it"
        )
    why = checkpointing.not_a_folder(output)
    if why:
        raise hf_io.CheckpointFormatError(f"--output {output} {why}")


def _first_missing(path: pathlib.Path) -> pathlib.Path | None:
    """The outermost folder of local `path` that does not exist yet (None: it exists)."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def hf_to_orbax(hf_dir, output, dtype: str | None = None) -> ModelConfig:
    """Converts a HF directory to `output/params` + `output/model_config.json`. A failed
    conversion removes the folders it made; a folder that was there stays as it was."""
    from ecomgpt_jax import checkpointing

    check_orbax_output(output)
    output = checkpointing.as_path(output)
    local = "://" not in str(output)
    made = _first_missing(pathlib.Path(str(output))) if local else None
    try:
        checkpointing.make_writable_folder(output)
        cfg, params = hf_io.load_hf_params(hf_dir, dtype)
        checkpointing.save_params(output / "params", params)
        checkpointing.save_model_config(output, cfg)
    except BaseException:
        # Nothing of a failed conversion is left for a later one to trip on.
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        elif local:  # orbax's half-written params (its temporary folder)
            for partial in pathlib.Path(str(output)).glob("params.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        raise
    return cfg


def load_params_host(checkpoint, cfg: ModelConfig):
    """Restores the parameters at `checkpoint` onto the host CPU (dtype as stored)."""
    import jax

    from ecomgpt_jax import checkpointing
    from ecomgpt_jax.models import decoder

    params_dir, stored = checkpointing.params_metadata(checkpoint)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    expected = decoder.abstract_params(cfg)
    stored_dtypes = {
        jax.tree_util.keystr(p): getattr(m, "dtype", None)
        for p, m in jax.tree_util.tree_leaves_with_path(stored)
    }

    def target(path, leaf):
        dtype = stored_dtypes.get(jax.tree_util.keystr(path)) or leaf.dtype
        return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=cpu)

    abstract = jax.tree_util.tree_map_with_path(target, expected)
    return checkpointing.restore_params(params_dir, abstract)


def orbax_to_hf(
    checkpoint,
    output,
    cfg: ModelConfig | None = None,
    tokenizer_dir=None,
    dtype: str | None = None,
) -> pathlib.Path:
    """Writes a transformers-loadable directory from an orbax params checkpoint.

    The output folder and the tokenizer files are checked before anything is read or
    written, so a refusal leaves no half-made model folder behind.
    """
    import jax
    import numpy as np

    from ecomgpt_jax import checkpointing

    hf_io.check_output_dir(output, "--output")
    tokenizer_files = []
    if tokenizer_dir is not None:
        tokenizer_files = [
            pathlib.Path(tokenizer_dir) / name
            for name in hf_hub.TOKENIZER_FILES
            if (pathlib.Path(tokenizer_dir) / name).is_file()
        ]
        if not tokenizer_files:
            raise hf_io.CheckpointFormatError(
                f"--tokenizer_dir {tokenizer_dir}: none of "
                f"{', '.join(hf_hub.TOKENIZER_FILES)} found"
            )
    # Before looking for its model_config.json: a missing checkpoint is the real problem.
    checkpointing.resolve_params_path(checkpoint)
    if cfg is not None:
        check_given_config(checkpoint, cfg)
    cfg = cfg or find_model_config(checkpoint)
    params = jax.tree.map(np.asarray, load_params_host(checkpoint, cfg))
    out = hf_io.save_hf(cfg, params, output, dtype=dtype)
    for path in tokenizer_files:
        shutil.copy(path, out / path.name)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ecomgpt_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps usage lines and layout
    )
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "hf-to-orbax",
        help="HF safetensors directory -> orbax params",
        description="Write OUT/params (orbax) and OUT/model_config.json from a HF folder.",
    )
    a.add_argument(
        "--hf_dir",
        required=True,
        help="HF folder (config.json, *.safetensors), or hf://ORG/NAME[@REVISION] on the hub",
    )
    a.add_argument("--output", required=True, help="OUT: local path or gs://...")
    a.add_argument(
        "--dtype",
        choices=model_config.DTYPES,
        default=None,
        help="parameter and compute dtype (default float32)",
    )
    b = sub.add_parser(
        "orbax-to-hf",
        help="orbax params -> HF safetensors directory",
        description="Write a transformers-loadable folder from orbax parameters.",
    )
    b.add_argument(
        "--checkpoint",
        required=True,
        help="converted directory, training run directory or step directory",
    )
    b.add_argument("--output", required=True, help="new or empty local folder")
    b.add_argument(
        "--tokenizer_dir",
        default=None,
        help="folder (or hf://ORG/NAME) whose tokenizer files are copied along",
    )
    b.add_argument(
        "--dtype",
        choices=model_config.DTYPES,
        default=None,
        help="saved dtype (default: as stored)",
    )
    # Both would name the architecture: one must not silently win over the other.
    source = b.add_mutually_exclusive_group()
    source.add_argument(
        "--preset", default=None, help="model preset: a gin_configs/models/*.gin name"
    )
    source.add_argument("--model_config", default=None, help="path to a model_config.json")
    b.add_argument(
        "--push_to_hub",
        default=None,
        metavar="ORG/NAME",
        help="then upload the folder to this hub model repository (created if missing; "
        "needs a write token: huggingface-cli login or HF_TOKEN)",
    )
    b.add_argument(
        "--private", action="store_true", help="with --push_to_hub: create the repository private"
    )
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "hf-to-orbax":
            check_orbax_output(args.output)  # before a hub download, too
            hf_dir = hf_hub.local_dir(args.hf_dir)  # hf://ORG/NAME: downloaded first
            cfg = hf_to_orbax(hf_dir, args.output, args.dtype)
            print(f"wrote {args.output}/params ({cfg.hf_model_type}, {cfg.param_dtype})")
        else:
            cfg = None
            if args.model_config:
                from ecomgpt_jax import checkpointing

                cfg = checkpointing.load_model_config(args.model_config)
            elif args.preset:
                cfg = model_config.get_preset(args.preset)
            if args.push_to_hub:  # a typo found now, not after the export
                hf_hub.check_repo(args.push_to_hub)
            if hf_hub.is_hub_path(args.tokenizer_dir):  # after the cheap checks: a download
                from ecomgpt_jax import checkpointing

                hf_io.check_output_dir(args.output, "--output")
                checkpointing.resolve_params_path(args.checkpoint)
            tokenizer_dir = hf_hub.local_dir(args.tokenizer_dir, hf_hub.TOKENIZER_FILES)
            out = orbax_to_hf(args.checkpoint, args.output, cfg, tokenizer_dir, args.dtype)
            print(f"wrote {out}")
            if args.push_to_hub:
                print(f"uploaded: {hf_hub.push(out, args.push_to_hub, args.private)}")
    except (ConfigError, hf_io.CheckpointFormatError, hf_hub.HubError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # CheckpointError and its kinds, from checkpointing (imported lazily)
        checkpointing = sys.modules.get("ecomgpt_jax.checkpointing")
        if checkpointing is None or not isinstance(e, checkpointing.CheckpointError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
