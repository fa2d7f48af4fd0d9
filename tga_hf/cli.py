"""`tga-hf` command line: one sub-command group per module, each module exposing `add_commands(subparsers)`, and the
option groups several commands share (`add_model_options` + `load_model_from`, `add_safebench_option`), so that each
option is defined once."""

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# Each module registers its own sub-commands; the list is the only place that knows them all.
COMMAND_MODULES = (
    "tga_hf.experiment.commands",
    "tga_hf.training.commands",
    "tga_hf.eval.commands",
    "tga_hf.eval.analyses.commands",
    "tga_hf.hub.commands",
    "tga_hf.retrieval.commands",
    "tga_hf.vision_tower.commands",
)


DTYPES = ("float32", "bfloat16", "float16")


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    gguf_file: bool = True,
    placement: bool = True,
    tiny: bool = False,
) -> argparse._ArgumentGroup:
    """The options naming the model a command loads with `load_model_from`: `--model` and `--trust-remote-code`,
    with `gguf_file` also `--gguf-file`, with `placement` also `--device` / `--dtype` (else the model stays where and
    in the dtype `from_pretrained` puts it), with `tiny` also `--tiny` / `--seed` (the random test model).

    Example:

    ```python
    >>> parser = argparse.ArgumentParser()
    >>> add_model_options(parser, required=True)
    >>> model, processor, multimodal = load_model_from(parser.parse_args(["--model", "runs/tga/final"]))
    ```"""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        required=required,
        help="model folder or Hub id: image-text-to-text (TGA-LLaVA, stock LLaVA, ...) or a causal LM",
    )
    if tiny:
        group.add_argument("--tiny", action="store_true", help="use the tiny random TGA-LLaVA (plumbing check)")
        group.add_argument("--seed", type=int, default=0, help="seed of the tiny model")
    if gguf_file:
        group.add_argument("--gguf-file", help="GGUF file name inside --model (causal LMs shipped as GGUF)")
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow --model's own Python code (auto_map) to run; TGA-LLaVA folders never need it",
    )
    if placement:
        group.add_argument("--device", default="cpu")
        group.add_argument("--dtype", default="float32", choices=DTYPES)
    return group


def load_model_from(args: argparse.Namespace) -> tuple[Any, Any, bool]:
    """`(model, processor or tokenizer, is_multimodal)` named by the options of `add_model_options`: the tiny random
    model for `--tiny`, else `tga_hf.hub.loading.load_model` of `--model` (remote code only with
    `--trust-remote-code`). Options a command does not define keep the loader's defaults."""
    if getattr(args, "tiny", False):
        from .testing_utils import tiny_tga_llava

        return (*tiny_tga_llava(seed=args.seed), True)
    if not args.model:
        alternative = " or --tiny" if hasattr(args, "tiny") else ""
        raise SystemExit(f"give --model DIR (a saved model folder){alternative}")
    from .hub.loading import load_model

    return load_model(
        args.model,
        trust_remote_code=args.trust_remote_code,
        gguf_file=getattr(args, "gguf_file", None),
        dtype=getattr(args, "dtype", None),
        device=getattr(args, "device", None),
    )


def add_safebench_option(parser: argparse.ArgumentParser) -> None:
    """`--safebench`: the FigStep SafeBench CSV `tga_hf.data.sources.load_safebench` reads."""
    parser.add_argument(
        "--safebench", help="SafeBench CSV (default: $TGA_HF_SAFEBENCH, else the copy shipped with tga-hf)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tga-hf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. Errors the user can fix (a missing model folder, remote code not trusted, incomplete
    weights, an output folder that is not ours to replace) end with one line on stderr and exit status 2."""
    from .fileio import NotOurOutputError
    from .hub.loading import ModelLoadError

    parser = build_parser()
    # A sub-command with its own parser (`train`: TRL's TrlParser over dataclasses) takes the arguments argparse does
    # not know; every other one refuses them as before.
    args, remaining = parser.parse_known_args(argv)
    if remaining and not getattr(args, "parses_remaining", False):
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    args.remaining = remaining
    try:
        return int(args.func(args) or 0)
    except (ModelLoadError, NotOurOutputError) as error:
        parser.exit(2, f"tga-hf {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
