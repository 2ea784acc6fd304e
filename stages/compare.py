"""compare stage (aggregate): comparisons across groups of runs, from the fit stage's tables and per-step spectra,
into results/compare/ and results/compare.json (the files are listed in core/specscale/compare/compare.py)."""

from __future__ import annotations

from specscale.store.runs import RunStore
from specscale.compare.compare import write_compare
from specscale.study.labels import optim_extras
from specscale.study.plan import StudyPlan


def main(plan: StudyPlan, store: RunStore) -> int:
    results = store.project_root / "results"
    if not (results / "runs.csv").exists() or not (results / "betas.csv").exists():
        print("[compare] results/runs.csv or betas.csv missing: run `dvc repro fit` first")
        return 1
    study = plan.study
    summary = write_compare(results, store.stage_dir("spectra"), str(study.preset),
                            str(study.fit.reference_optimizer), optim_extras(plan), float(study.train.diverged_ppl))
    arch = summary["arch_vs_optimizer"]
    print(f"[compare] {summary['groups']} groups, {summary['runs']} runs; architecture vs optimizer: "
          f"{arch['k']} of {arch['n']} ({arch['missing']} missing)")
    print(f"[compare] paper: {summary['paper_note']}")
    return 0
