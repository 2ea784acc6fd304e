"""report stage (aggregate): report/index.html (self-contained, renders offline), report/figures/*.png and
*.vl.json, report/summary.md, from results/*.csv and the compare stage's results/compare/*.

The study description (preset, sweep, ablations, probe token counts) comes from the resolved plan; the choices made
where the paper is silent are read from README.md's "Choices where the paper is silent" at build time, so the
report never drifts from the documentation. What the report shows is core/specscale/report/sections.py's SECTIONS.
"""

from __future__ import annotations

from specscale.store.runs import RunStore
from specscale.study.plan import StudyPlan
from specscale.report.report import build_report, parse_choices
from specscale.report.sections import study_context


def main(plan: StudyPlan, store: RunStore) -> int:
    root = store.project_root
    results = root / "results"
    if not (results / "compare").is_dir():
        print("[report] results/compare/ missing: run `dvc repro compare` first")
        return 1
    readme = root / "README.md"
    choices = parse_choices(readme.read_text(encoding="utf-8")) if readme.exists() else []
    if not choices:
        print("[report] WARNING: README.md has no 'Choices where the paper is silent' section; the report lists "
              "only its own choices")
    index = build_report(results, root / "report", study_context(plan), choices)
    print(f"[report] wrote {index.relative_to(root)}, {index.parent.relative_to(root)}/summary.md and figures/")
    return 0
