"""One-off: rewrite the committed experiment reports in the report schema 2 of `tga_hf.report`.

`results/*/report.json` were written in the experiment's flat layout (`dsr`, `dsr_ci`, `dsr_detail`, `dsr_probe`, ...
at the top level). `tga_hf.report.Report.from_dict` still reads that layout, so nothing depends on this script; it
keeps the committed files in the schema the code writes. Every number is carried over; the experiment's own analyses
(config, judges, judge calibration, safety band, cosine, training log history, projector calibration, wall time,
export) move under `details`. `report.md` is rendered again from the migrated report by the one renderer. Reports
already in schema 2 are left alone.

Run once from the repository root: `python results/migrate_to_schema_2.py`.
"""

import json
from pathlib import Path

from tga_hf.experiment.report import write_report
from tga_hf.report import SCHEMA_VERSION, Report


def migrate(folder: Path) -> bool:
    """Migrate `folder/report.json` (and re-render `report.md`); False when it is already in schema 2."""
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    if data.get("schema_version") == SCHEMA_VERSION:
        return False
    report = Report.from_dict(data)
    report.files["responses"] = sorted(path.relative_to(folder).as_posix() for path in folder.glob("responses/*.jsonl"))
    report.files["plots"] = sorted(path.name for path in folder.glob("*.png"))
    write_report(report, folder)
    again = Report.from_dict(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    if again != report:
        raise RuntimeError(f"{folder}/report.json does not read back as the report it was migrated to")
    return True


def main() -> None:
    for path in sorted(Path(__file__).parent.glob("*/report.json")):
        print(f"{path.parent.name}: {'migrated' if migrate(path.parent) else 'already schema 2'}")


if __name__ == "__main__":
    main()
