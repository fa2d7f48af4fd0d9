"""`tga-hf demo` (the embedded default) and `tga-hf experiment reproduce --config FILE`."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from .config import DEMO, SMOKE, ExperimentConfig

if TYPE_CHECKING:
    from ..report import Report


def _print_summary(report: Report) -> None:
    from .report import CONDITION_LABELS

    print(f"\nDSR (phrase judge, n={report.n_test} FigStep requests)")
    for entry in report.safety.dsr if report.safety else []:
        low, high = entry.overall.ci95 or (entry.overall.rate, entry.overall.rate)
        label = CONDITION_LABELS.get(entry.condition or "", entry.condition or entry.dataset)
        print(f"  {label:<58} {100 * entry.overall.rate:5.1f}%  [{100 * low:.1f}, {100 * high:.1f}]")
    if "export" in report.details:
        export = report.details["export"]
        print(f"\nexported and reloaded ({export['loaded_class']}): {export['folder']}")
        for name, answer in export["answers"].items():
            print(f"  {name}: {answer['request']!r} -> {answer['response']!r}")


def _run(config: ExperimentConfig, out: str) -> int:
    from .pipeline import run_experiment

    command = "tga-hf " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    report = run_experiment(config, out, command=command)
    _print_summary(report)
    print(f"\nreport: {out}/report.md")
    return 0


def _demo(args: argparse.Namespace) -> int:
    config = SMOKE if args.smoke else DEMO
    return _run(config, args.out)


def _reproduce(args: argparse.Namespace) -> int:
    config = ExperimentConfig.from_yaml(args.config)
    return _run(config, args.out or f"results/{config.name}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="the embedded default experiment: baseline vs TGA on SmolLM2, CPU-sized")
    demo.add_argument("--out", default="tga-demo", help="artefact folder (default: ./tga-demo)")
    demo.add_argument("--smoke", action="store_true", help="the still smaller CI configuration of the same code path")
    demo.set_defaults(func=_demo)

    experiment = subparsers.add_parser("experiment", help="full-size experiments")
    actions = experiment.add_subparsers(dest="action", required=True)
    reproduce = actions.add_parser("reproduce", help="baseline / retrieval-only / TGA from a YAML config")
    reproduce.add_argument("--config", required=True)
    reproduce.add_argument("--out", default=None, help="default: results/<config name>")
    reproduce.set_defaults(func=_reproduce)
