"""What distinguishes a run beyond its optimizer name and varied fields: the optimizer hyperparameters its arm
overrides relative to the study's own ('lr=0.0001'), as text for labels. Shared by the fit stage (runs.csv) and the
compare stage (group display labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specscale.optim.defaults import TIED_LRS, resolve_lr_ties
from specscale.study.plan import StudyPlan
from specscale.study.sweep import resolve_hparams


def fmt_value(value: Any) -> str:
    """Canonical text of a varied value or hyperparameter: 0.25 → '0.25', 1.0 → '1', 1e-4 → '0.0001'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.6f}".rstrip("0")
    return str(value)


def format_extra(diff: dict[str, Any]) -> str:
    """An arm's optimizer overrides as text; lr, embed_lr and head_lr all set to one value read 'lr=<v>'."""
    if not diff:
        return ""
    lrs = {k: v for k, v in diff.items() if k.endswith("lr")}
    if lrs and len(set(map(str, lrs.values()))) == 1:
        rest = {k: v for k, v in diff.items() if k not in lrs}
        diff = {"lr": next(iter(lrs.values())), **rest}
    return " ".join(f"{k}={fmt_value(v)}" for k, v in diff.items())


def optim_extras(plan: StudyPlan) -> dict[str, str]:
    """Training run key → the hyperparameters its arm overrides relative to the study's own (e.g. 'lr=0.0001'). A
    per-role lr that is still tied to the run's lr (embed = lr, head = lr/√d_model under Lion) is not an override."""
    out, defaults = {}, {}
    for run in plan.train:
        name = run.point.optimizer
        if name not in defaults:
            defaults[name] = resolve_hparams(plan.study, name, None, Path("params.yaml"))
        hp = run.spec["optim"]["hparams"]
        tied = resolve_lr_ties(name, {**hp, **{k: None for k in TIED_LRS if k in hp}}, run.spec["model"]["d_model"])
        varied = {k.split(".", 1)[1] for k in run.point.varied if k.startswith("optim.")}  # in the label already
        diff = {k: v for k, v in hp.items() if defaults[name].get(k) != v and k not in varied
                and not (k in TIED_LRS and tied[k] == v)}
        out[run.key] = format_extra(diff)
    return out
