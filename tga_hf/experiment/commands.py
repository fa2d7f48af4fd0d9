"""`tga-hf demo` (the released LVLMs side by side; `--train`: the embedded miniature run) and `tga-hf experiment
reproduce --config FILE`."""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import DEMO, RELEASES, SMOKE, ExperimentConfig

if TYPE_CHECKING:
    from ..report import Report


def _print_summary(report: Report) -> None:
    from .report import CONDITION_LABELS

    if report.preconditions:
        print("\nPreconditions")
        for check in report.preconditions:
            verdict = "PASS" if check.passed else "FAIL"
            print(f"  {check.description:<78} {check.metric} {check.value:.3f} (>= {check.threshold}) {verdict}")
    print(f"\nDSR (phrase judge, n={report.n_test} SafeBench requests, {report.split} split)")
    for entry in report.safety.dsr if report.safety else []:
        low, high = entry.overall.ci95 or (entry.overall.rate, entry.overall.rate)
        label = CONDITION_LABELS.get(entry.condition or "", entry.condition or entry.dataset)
        print(f"  {label:<58} {100 * entry.overall.rate:5.1f}%  [{100 * low:.1f}, {100 * high:.1f}]")
    if "export" in report.details:
        export = report.details["export"]
        print(f"\nexported and reloaded ({export['loaded_class']}): {export['folder']}")
        for name, answer in export["answers"].items():
            print(f"  {name}: {answer['request']!r} -> {answer['response']!r}")


def _one_line_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An error of `command` ends it with one line naming the error, not a traceback of dozens of frames (the whole
    traceback with `--traceback`)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Exception as error:
            if args.traceback:
                raise
            raise SystemExit(f"tga-hf: error: {type(error).__name__}: {error} (--traceback shows where)") from None

    return run


def _run(config: ExperimentConfig, out: str, resume: bool) -> int:
    from .pipeline import run_experiment

    command = "tga-hf " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    report = run_experiment(config, out, command=command, resume=resume)
    _print_summary(report)
    print(f"\nreport: {out}/report.md")
    return 0


@_one_line_errors
def _demo(args: argparse.Namespace) -> int:
    if args.train:
        return _run(SMOKE if args.smoke else DEMO, args.out, args.resume)
    if args.smoke or args.resume:
        raise ValueError("--smoke and --resume belong to the miniature training run: add --train")
    from .showcase import print_showcase, run_showcase

    print(f"the released LVLMs of {args.releases}, rebuilt offline on their verified base LLM and tower")
    conditions = run_showcase(args.releases, args.out)
    print_showcase(conditions)
    print(f"\nanswers, showcase.json and dsr.png: {args.out}/  (the full test-split numbers: the run's report.md)")
    return 0


@_one_line_errors
def _reproduce(args: argparse.Namespace) -> int:
    config = ExperimentConfig.from_yaml(args.config)
    return _run(config, args.out or f"results/{config.name}", args.resume)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reload the stages and evaluations this configuration already finished in the output folder",
    )
    parser.add_argument("--traceback", action="store_true", help="on an error, show the whole Python traceback")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the released baseline and TGA LVLMs side by side on held-out images (--train: a miniature run)"
    )
    demo.add_argument("--out", default="tga-demo", help="artefact folder (default: ./tga-demo)")
    demo.add_argument(
        "--releases", default=RELEASES, help=f"folder of the release folders, one per arm (default: {RELEASES})"
    )
    demo.add_argument(
        "--train",
        action="store_true",
        help="instead, train and evaluate the embedded miniature experiment (SmolLM2: baseline vs retrieval vs TGA)",
    )
    demo.add_argument("--smoke", action="store_true", help="with --train: the still smaller CI configuration")
    _add_run_options(demo)
    demo.set_defaults(func=_demo)

    experiment = subparsers.add_parser("experiment", help="full-size experiments")
    actions = experiment.add_subparsers(dest="action", required=True)
    reproduce = actions.add_parser("reproduce", help="baseline / retrieval-only / TGA from a YAML config")
    reproduce.add_argument("--config", required=True)
    reproduce.add_argument("--out", default=None, help="default: results/<config name>")
    _add_run_options(reproduce)
    reproduce.set_defaults(func=_reproduce)
