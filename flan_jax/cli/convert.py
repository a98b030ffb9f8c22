"""`flan-jax convert hf-to-flan | flan-to-hf | t5x-to-flan SRC DST`."""

from __future__ import annotations

import argparse
import os
import sys

from flan_jax import convert
from flan_jax.checkpoints.manager import check_param_shapes


def _hf_to_flan(src: str, dst: str) -> str:
    from flan_jax.convert import hf

    params, architecture, cfg, hf_config = hf.hf_to_flan(src)
    convert.save_converted(dst, params, architecture, cfg, {"source": src, "hf_config": hf_config})
    return f"{hf.hf_architecture(hf_config)} -> {architecture}"


def _train_run_model(src: str) -> tuple[str, str, object]:
    """(orbax step dir, architecture, TransformerConfig) of a `flan-jax train` checkpoint: the
    model comes from the run's config.gin (a train checkpoint has no flan_model.json)."""
    import gin
    from flan_jax.checkpoints import manager as checkpoints
    from flan_jax.cli import gin_flags
    from flan_jax.model import models

    config = gin_flags.find_run_config([src])
    item = checkpoints._orbax_item_dir(checkpoints.absolute_path(src))
    if config is None or item is None:
        raise FileNotFoundError(
            f"{src} is neither a converted dir (default/ + {convert.MODEL_CONFIG_FILE}) nor a "
            "`flan-jax train` MODEL_DIR, its checkpoints/ or a step dir (with the run's "
            "config.gin)"
        )
    gin.clear_config()
    gin.parse_config_file(config)
    model = gin_flags.macro_value("MODEL")
    architecture = (
        "decoder_only" if isinstance(model, models.DecoderOnlyModel) else "encoder_decoder"
    )
    return os.path.dirname(item), architecture, model.config


def _flan_to_hf(src: str, dst: str) -> str:
    from flan_jax.convert import hf

    if os.path.isfile(os.path.join(src, convert.MODEL_CONFIG_FILE)):
        architecture, cfg, meta = convert.load_converted_config(src)
    else:  # a `flan-jax train` checkpoint
        src, architecture, cfg = _train_run_model(src)
        meta = {}
    hf.flan_to_hf(convert.load_params(src), architecture, cfg, dst, meta.get("hf_config"))
    return f"{architecture} -> HF"


def _t5x_to_flan(src: str, dst: str) -> str:
    from flan_jax.convert import t5x

    params = t5x.load_t5x_params(src)
    cfg = t5x.config_from_t5x_params(params)
    expected = convert.expected_param_shapes("encoder_decoder", cfg)
    check_param_shapes(params, expected, src)
    convert.save_converted(dst, params, "encoder_decoder", cfg, {"source": src})
    return "T5X -> encoder_decoder"


COMMANDS = {"hf-to-flan": _hf_to_flan, "flan-to-hf": _flan_to_hf, "t5x-to-flan": _t5x_to_flan}


def main(argv: list[str] | None = None) -> int:
    """Entry point; argv excludes the program and `convert` (e.g. ['hf-to-flan', SRC, DST])."""
    parser = argparse.ArgumentParser(
        prog="flan-jax convert",
        description="Convert Hugging Face, T5X and flan_jax checkpoints (local paths only).",
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "src",
        help="HF dir, T5X checkpoint_<step> dir, a converted flan dir, or (flan-to-hf) a "
        "`flan-jax train` MODEL_DIR or its checkpoints/<step>",
    )
    parser.add_argument(
        "dst", help="output dir (flan: default/ + flan_model.json; HF: safetensors + config)"
    )
    args = parser.parse_args(argv)
    src, dst = os.path.expanduser(args.src), os.path.expanduser(args.dst)
    what = COMMANDS[args.command](src, dst)
    print(f"converted {args.src} ({what}) into {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
