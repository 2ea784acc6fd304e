"""fit stage (aggregate): results/runs.csv, ranks.csv, betas*.csv and the metrics JSON (specscale.fit.fit)."""

from __future__ import annotations

from specscale.store.runs import RunStore
from specscale.fit.fit import write_fit_results
from specscale.study.plan import StudyPlan


def main(plan: StudyPlan, store: RunStore) -> int:
    return write_fit_results(plan, store, store.project_root / "results")
