"""`tga-hf demo`: the released LVLMs of the reproduction side by side, on held-out data, on the CPU.

The releases (`tga_hf.hub.save_release` folders: trained projector + LoRA adapter + retrieval index) are rebuilt
offline on their verified base LLM and tower, then shown SafeBench test-split requests drawn as images (question
framing, in the layout of the model's tower) and benign-but-alarming requests drawn the same way; the phrase judge
scores each answer. What it prints is a small sample of the run's own evaluation, not a new result: the full numbers
are in the run's report.

    showcase = run_showcase("results/reproduce_v2_qwen_shared_test/release", "tga-demo")
"""

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..data.sources import first_per_category, load_benign_prompts, load_safebench
from ..eval.commands import model_rendering
from ..eval.generation import generate_responses, write_jsonl
from ..eval.judges import PhraseRefusalJudge
from ..eval.metrics import defense_success_rate, over_refusal_rate
from ..fileio import write_text_atomic
from ..hub import load_release
from ..report import ReportRate
from .config import RELEASES
from .data import Presentation
from .plots import plot_rates

SHOWCASE_ARMS = ("baseline", "tga")
SHOWCASE_FILE = "showcase.json"


@dataclass
class ShowcaseCondition:
    """One arm as shown: its release, whether retrieval was on, the judged answers and the two rates."""

    name: str
    release: str
    retrieval: bool
    dsr: ReportRate
    over_refusal: ReportRate
    toxic: list[dict] = field(repr=False)
    benign: list[dict] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "release": self.release,
            "retrieval": self.retrieval,
            "dsr": self.dsr.to_dict(),
            "over_refusal": self.over_refusal.to_dict(),
        }


def _judged(records: list[dict], judge: PhraseRefusalJudge) -> tuple[list[dict], list[bool]]:
    refused = judge.judge([r["prompt"] for r in records], [r["response"] for r in records])
    return [{**record, "refused": verdict} for record, verdict in zip(records, refused, strict=True)], refused


def run_showcase(
    releases: str | Path,
    out_dir: str | Path,
    arms: tuple[str, ...] = SHOWCASE_ARMS,
    n_per_category: int = 2,
    n_benign: int = 10,
    max_new_tokens: int = 40,
    progress: bool = True,
) -> list[ShowcaseCondition]:
    """Load each arm's release from `releases/<arm>` and answer `n_per_category` SafeBench test requests per category
    and `n_benign` benign-but-alarming requests, all as images; arms with a retrieval index run with retrieval on and
    off. Writes the judged answers, `showcase.json` and `dsr.png` under `out_dir`; returns the conditions."""
    releases, out_dir = Path(releases), Path(out_dir)
    missing = [arm for arm in arms if not (releases / arm).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"no release folder for {missing} under {releases}: run the demo from the repository root, pass "
            "--releases, or train the miniature run with `tga-hf demo --train`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = PhraseRefusalJudge()
    safebench = load_safebench(limit_per_category=n_per_category, split="test")
    benign = first_per_category(load_benign_prompts(), max(1, n_benign // 5))[:n_benign]
    conditions = []
    for arm in arms:
        model, processor = load_release(releases / arm)
        presentation = Presentation("question", model_rendering(model))
        toxic_items = [presentation.request(item) for item in safebench]
        benign_items = [presentation.request(item) for item in benign]
        with_retriever = getattr(processor, "retriever", None) is not None
        for retrieval in (True, False) if with_retriever else (False,):
            name = f"{arm}_image" if retrieval or not with_retriever else f"{arm}_image_no_retrieval"
            generate = partial(
                generate_responses,
                model,
                processor,
                max_new_tokens=max_new_tokens,
                retrieval=retrieval,
                progress=progress,
            )
            toxic, toxic_refused = _judged(generate(toxic_items), judge)
            answered, benign_refused = _judged(generate(benign_items), judge)
            write_jsonl(toxic + answered, out_dir / "responses" / f"{name}.jsonl")
            categories = [r["category"] for r in toxic]
            conditions.append(
                ShowcaseCondition(
                    name=name,
                    release=str(releases / arm),
                    retrieval=retrieval,
                    dsr=ReportRate.of(defense_success_rate(toxic_refused, categories).overall),
                    over_refusal=ReportRate.of(over_refusal_rate(benign_refused).overall),
                    toxic=toxic,
                    benign=answered,
                )
            )
        del model
    plot_rates(
        [c.name for c in conditions],
        [c.dsr for c in conditions],
        "DSR (phrase judge)",
        f"Released LVLMs on {len(safebench)} SafeBench test requests as images, 95% Wilson intervals",
        out_dir / "dsr.png",
    )
    summary = {
        "releases": str(releases),
        "n_toxic": len(safebench),
        "n_benign": len(benign),
        "max_new_tokens": max_new_tokens,
        "conditions": [c.to_dict() for c in conditions],
    }
    write_text_atomic(out_dir / SHOWCASE_FILE, json.dumps(summary, indent=1))
    return conditions


def print_showcase(conditions: list[ShowcaseCondition], examples: int = 3, width: int = 60) -> None:
    """The DSR / over-refusal table and the first `examples` requests with every condition's answer beside."""
    print(f"\n{'condition':<30} {'DSR (harmful images refused)':<34} over-refusal (benign images refused)")
    for c in conditions:
        print(f"{c.name:<30} {_rate(c.dsr):<34} {_rate(c.over_refusal)}")
    for index in range(min(examples, len(conditions[0].toxic))):
        print(f"\nrequest (image): {conditions[0].toxic[index]['image_text'][: width * 2]}")
        for c in conditions:
            record = c.toxic[index]
            verdict = "REFUSED " if record["refused"] else "answered"
            print(f"  {c.name:<28} {verdict} {record['response'][:width]!r}")


def _rate(rate: ReportRate) -> str:
    low, high = rate.ci95 or (rate.rate, rate.rate)
    return f"{100 * rate.rate:5.1f}% [{100 * low:.0f}, {100 * high:.0f}] ({rate.count}/{rate.total})"


__all__ = ["RELEASES", "ShowcaseCondition", "print_showcase", "run_showcase"]
