"""Matched loss over seeds (issue 20 §2; docs/science.md §7): results/compare/matched_claims.csv, rows in the claims
format (specscale.stats.intervals.CLAIM_COLUMNS).

A matched-loss group differs from a base group only in train.steps (e.g. AdamW trained twice as long, the `steps`
family of compare.comparisons.group_table). Per seed it is set beside its own base (same optimizer settings) and
beside every other optimizer of the base architecture; every β of one comparison is read on the widths all of its
groups share (refits from results/betas_shared.csv). Over the seeds, each counted set × soft/hard metric gives:
  longer training     β_long − β_base: what the extra steps changed
  matched loss        β_other − β_long: does another optimizer's β gap survive against the longer-trained one
Each a paired t over the seeds both sides have, Holm within its family (specscale.stats.families). Whether the loss
is in fact matched is read from matched_loss_ppl.csv beside it; this table does not assert it.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from specscale.compare.comparisons import COUNTED_BUCKETS, base_lookup, headline
from specscale.compare.widths import WidthBetas, widths_text
from specscale.measure.registry import FIT_METRICS, display_name
from specscale.stats.families import CANDIDATE_COLUMNS, judge_paired

LONGER, MATCHED = "longer training", "matched loss"


def _label(optim_label: str, setting: str) -> str:
    return f"{optim_label} {setting}".strip()


def matched_claims(betas: pd.DataFrame, groups: pd.DataFrame, shared: pd.DataFrame | None = None) -> pd.DataFrame:
    """The two families above; CLAIM_COLUMNS (empty when the study has no matched-loss group)."""
    bases = base_lookup(groups)
    base_rows = groups[groups["family"] == "base"]
    lookup = WidthBetas(headline(betas), shared, groups)
    # (claim, family) → seed → (a, b), and the widths each comparison was read on
    pairs: dict[tuple[str, str], dict[int, tuple[float, float]]] = defaultdict(dict)
    widths_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for g in groups[groups["family"] == "steps"].itertuples():
        seed = int(g.seed)
        base = bases.get((g.optim_label, seed))
        if base is None:
            continue
        long_label = _label(g.optim_label, g.setting)
        others = [(o.optim_label, o.group) for o in base_rows[base_rows["seed"] == seed].itertuples()
                  if o.group != base]
        comparisons = [(f"{long_label} − {g.optim_label}", LONGER, g.group, base)]
        comparisons += [(f"{label} − {long_label}", MATCHED, group, g.group) for label, group in others]
        for name, family, a, b in comparisons:
            widths = lookup.common(a, b)
            for bucket in COUNTED_BUCKETS:
                for metric in FIT_METRICS:
                    claim = f"{name}: {bucket} β_{display_name(metric)} post, trained"
                    pairs[(claim, family)][seed] = (lookup.beta(a, bucket, metric, widths)[0],
                                                    lookup.beta(b, bucket, metric, widths)[0])
                    widths_of[(claim, family)].add(widths_text(widths))
    rows = [{"claim": claim, "family": family, "a": {s: v[0] for s, v in seeds.items()},
             "b": {s: v[1] for s, v in seeds.items()}, "widths": "; ".join(sorted(widths_of[(claim, family)]))}
            for (claim, family), seeds in pairs.items()]
    return judge_paired(pd.DataFrame(rows, columns=CANDIDATE_COLUMNS))
