"""fit stage (aggregate): results/runs.csv, ranks.csv, betas*.csv and the metrics JSON (specscale.fit_study)."""

from __future__ import annotations

from specscale.cache import RunStore
from specscale.fit_study import write_fit_results
from specscale.plan import StudyPlan


def main(plan: StudyPlan, store: RunStore) -> int:
    return write_fit_results(plan, store, store.project_root / "results")
