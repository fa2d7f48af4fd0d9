"""The test ledger: every evaluation on the SafeBench test split leaves a line in `test_ledger.jsonl` beside the run
folder, so a report can list every configuration that has ever seen the test requests (choices belong on dev)."""

import datetime
import json
from pathlib import Path
from typing import Any

from .config import ExperimentConfig

LEDGER_FILE = "test_ledger.jsonl"


def ledger_path(out_dir: str | Path) -> Path:
    """The ledger of a run folder: in its parent, shared by the runs beside it (`results/test_ledger.jsonl`)."""
    return Path(out_dir).absolute().parent / LEDGER_FILE


def record_test_evaluation(config: ExperimentConfig, out_dir: str | Path) -> dict[str, Any]:
    """Append this run's line (config name, config sha256, UTC time, run folder as given) to the ledger; returns it.
    Called before the first test request is generated, so an evaluation that fails halfway is on record too."""
    line = {
        "config": config.name,
        "config_sha256": config.fingerprint(),
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "out_dir": str(out_dir),
    }
    path = ledger_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    return line


def configurations_on_test(out_dir: str | Path) -> list[dict[str, Any]]:
    """The ledger beside `out_dir`, one line per (configuration, run folder) with its first time: a resumed run
    evaluates the same configuration in the same folder, not a new one."""
    path = ledger_path(out_dir)
    if not path.is_file():
        return []
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
        seen.setdefault((line["config_sha256"], line["out_dir"]), line)
    return list(seen.values())


__all__ = ["LEDGER_FILE", "configurations_on_test", "ledger_path", "record_test_evaluation"]
