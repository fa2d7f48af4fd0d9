"""`tga-hf` command line: one sub-command group per module, each module exposing `add_commands(subparsers)`."""

import argparse
import importlib
import sys
from collections.abc import Sequence

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
