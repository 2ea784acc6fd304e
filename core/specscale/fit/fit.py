"""The fit stage's computation: ranks per run and scaling-law fits rank ∝ D^β per group of runs that differ only in
width, for a whole study (docs/science.md §6), built on the primitives of specscale.fit.laws.

Per run, bucket, site and metric: median over the last K logged checkpoints per layer, then the median over layers
with ±1 SD (ddof 1) of the layer medians. The same at step 0 — the untrained network — is the baseline of every β.
Outputs (results/):
  runs.csv            one row per training run: labels, validation loss/perplexity, diverged
  ranks.csv           per run × phase (trained | step0) × bucket × site × metric: median, sd, n_layers, N, D, N/D;
                      plus derived rows: TII (metric tii, bucket TAIL-HEAD, site post) and ρ_α (metric rho_<α>,
                      site post/pre), aggregated as fit.rho_aggregation says (`derived_rows`)
  betas.csv           per group × phase × bucket × site × metric: β, 95% OLS t-interval, R², n, bootstrap interval
                      and mixed_code / mixed_spec: what differs across the group's widths besides the width
  betas_per_layer.csv the same fit on each layer's medians (does the layer median hide disagreement?)
  betas_seeds.csv     across seeds: mean β and a t-interval over seeds (only when the sweep has ≥ 2 seeds)
  val_steps.csv       validation loss/perplexity at every kept checkpoint (runs with train.checkpoint_val_tokens > 0)
  train_curves.csv    training loss over steps of every run (block means of log.jsonl, curves.py)
  betas_steps.csv, betas_steps_seeds.csv, beta_gaps.csv, beta_gaps_steps.csv: β at every kept step, its seed means,
                      and each optimizer minus the reference over seeds, on shared widths (specscale.fit.seed_stats)
  betas_shared.csv    each group refitted on the widths it shares with a group of other widths (fit.shared_widths)
  claims.csv          every difference the report states, with its test, family and verdict (specscale.fit.claims)
  betas.json          headline β (post site) for `dvc metrics`; perplexity.json likewise
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from specscale.fit.curves import train_curves
from specscale.store.runs import RESULT_FILE, VAL_LOG_FILE, RunStore, stable_hash
from specscale.fit.laws import aggregate_checkpoints_and_layers, bootstrap_beta, fit_points, soft_minus_hard
from specscale.store.fingerprint import mixed_files
from specscale.study.plan import StudyPlan
from specscale.study.labels import optim_extras
from specscale.fit.claims import Primary, claim_tables, seeds_with_step0
from specscale.fit.seed_stats import betas_per_step, rank_points, seed_means, step_points
from specscale.fit.shared_widths import shared_width_fits
from specscale.measure.metrics import MIN_N_OVER_D, tail_integrity_index
from specscale.measure.registry import (BETAS_TABLE, FIT_METRICS, RENYI_PREFIX, SPECTRUM_COLUMNS, display_name,
                                        is_renyi, shown_in, unknown_columns)
from specscale.study.spec import RHO_AGGREGATIONS, PrimarySpec

GROUP_KEYS = ["group", "phase", "bucket", "site", "metric"]  # one β per combination
BETA_COLUMNS = [*GROUP_KEYS, "beta", "ci95_low", "ci95_high", "r2", "n_widths", "fitted", "reason", "intercept", "se",
                "boot_low", "boot_high", "min_N_over_D"]


def collect_runs(plan: StudyPlan, store: RunStore) -> pd.DataFrame:
    """One row per finished training run: labels, group hashes, validation result, whether it was measured."""
    rows = []
    extras = optim_extras(plan)
    for train, spectra in zip(plan.train, plan.spectra):
        if not store.is_done("train", train.key):
            continue
        result = json.loads((store.final_dir("train", train.key) / RESULT_FILE).read_text())
        point = train.point
        no_seed = point.group_spec()
        no_seed.pop("seed")
        rows.append({
            "run": train.key, "spectra_key": spectra.key, "label": point.label, "arms": ",".join(point.arms),
            "group": stable_hash(point.group_spec()), "seed_group": stable_hash(no_seed),
            "group_label": point.group_label, "optimizer": point.optimizer, "width_mult": point.width,
            "optim_extra": extras[train.key],
            # the configuration without width and seed ('muon lr=0.01 n_heads=2'): the label of a seed group
            "config": " ".join(x for x in (point.optimizer, extras[train.key], point.varied_label) if x),
            "ffn_dim": result["ffn_dim"], "seed": point.seed, "steps": train.spec["train"]["steps"],
            "tokens_per_step": train.spec["train"]["batch_size"] * train.spec["train"]["seq_len"],
            "varied": json.dumps(point.varied, sort_keys=True),
            "val_loss": result["val_loss"], "val_ppl": result["val_ppl"], "diverged": result["diverged"],
            "measured": store.is_done("spectra", spectra.key),
        })
    return pd.DataFrame(rows)


def val_steps(runs: pd.DataFrame, store: RunStore) -> pd.DataFrame:
    """Validation loss and perplexity at every kept checkpoint of the runs that logged it (train.checkpoint_val_tokens
    > 0): one row per run and step, with the run's labels and the training tokens seen."""
    rows = []
    for r in runs.itertuples():
        path = store.final_dir("train", r.run) / VAL_LOG_FILE
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            loss = float(entry["val_loss"])
            rows.append({"run": r.run, "config": r.config, "optimizer": r.optimizer, "width_mult": r.width_mult,
                         "seed": r.seed, "step": int(entry["step"]), "tokens": int(entry["step"]) * r.tokens_per_step,
                         "val_loss": loss, "val_ppl": math.exp(loss) if loss < 700 else math.inf})
    return pd.DataFrame(rows, columns=["run", "config", "optimizer", "width_mult", "seed", "step", "tokens",
                                       "val_loss", "val_ppl"])


def _spec_fields(spec: dict[str, Any], drop: tuple[str, ...]) -> dict[str, str]:
    """A run's spec.json flattened to {dotted path: JSON of the value}, without the fields under `drop`."""
    flat = pd.json_normalize(spec, sep=".").iloc[0].to_dict() if spec else {}
    return {k: json.dumps(v, default=str, sort_keys=True) for k, v in flat.items() if not k.startswith(drop)}


# what may differ between the widths of one group: the width, unhashed runtime fields, and the keys derived from the
# training run (the spectra run's input and measurement key)
WIDTH_FREE = {"train": ("runtime", "model.ffn_mult"), "spectra": ("runtime", "inputs.train", "measure_key")}


def mixed_groups(plan: StudyPlan, store: RunStore) -> pd.DataFrame:
    """Per group (index) of measured runs fitted together: `mixed_code`, the files whose code fingerprint differs
    across the group's widths, per stage ('train: core/specscale/train/train.py; spectra:
    core/specscale/measure/metrics.py'), and `mixed_spec`, the spec fields other than the width that differ across
    them. '' where the group's runs agree."""
    members: dict[str, list[dict[str, str]]] = {}
    for run in zip(plan.train, plan.activations, plan.spectra):
        if store.is_done("spectra", run[2].key):  # only measured runs enter a fit
            keys = {r.stage: r.key for r in run}
            members.setdefault(stable_hash(run[0].point.group_spec()), []).append(keys)
    rows = {}
    for group, runs in members.items():
        code, fields = [], set()
        for stage in ("train", "activations", "spectra"):
            prints = [store.recorded_code(stage, r[stage]) for r in runs if store.is_done(stage, r[stage])]
            if files := mixed_files(prints):
                code.append(f"{stage}: {', '.join(files)}")
        for stage, drop in WIDTH_FREE.items():
            specs = [_spec_fields(store.load_spec(stage, r[stage]), drop) for r in runs]
            fields |= {f for f in set().union(*specs) if len({s.get(f) for s in specs}) > 1}
        rows[group] = {"mixed_code": "; ".join(code), "mixed_spec": ", ".join(sorted(fields))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["mixed_code", "mixed_spec"])


def long_ranks(runs: pd.DataFrame, store: RunStore) -> pd.DataFrame:
    """Every measured run's ranks.csv in long form: one row per (run, step, layer, site, bucket, metric)."""
    parts = []
    for run in runs[runs["measured"]].itertuples():
        df = pd.read_csv(store.final_dir("spectra", run.spectra_key) / "ranks.csv")
        df["run"] = run.run
        parts.append(df)
    if not parts:
        return pd.DataFrame()
    ranks = pd.concat(parts, ignore_index=True)
    return ranks.melt(id_vars=["run", "step", "layer", "site", "bucket", "N", "D", "N_over_D"],
                      value_vars=metric_columns(ranks.columns), var_name="metric", value_name="value")


# ranks.csv's columns that are not metrics: the spectra stage's, and the run key long_ranks adds
NON_METRIC_COLUMNS: tuple[str, ...] = ("run", *SPECTRUM_COLUMNS)


def metric_columns(columns: Iterable[str]) -> list[str]:
    """The metric columns of spectra runs' ranks.csv, in their order, chosen by the metric registry. A column that is
    neither a registered metric nor one of NON_METRIC_COLUMNS fails, naming it: a metric the spectra stage computes
    but the registry lacks would otherwise vanish from every table without a word."""
    columns = list(columns)
    if unknown := unknown_columns(columns, NON_METRIC_COLUMNS):
        raise ValueError(f"ranks.csv columns {unknown} are no metric of specscale.measure.registry and none of "
                         f"{list(NON_METRIC_COLUMNS)}: register the metric (docs/architecture.md, Adding things)")
    return [c for c in columns if c not in NON_METRIC_COLUMNS]


def metric_rows(metric: pd.Series, keep: Callable[[str], bool]) -> pd.Series:
    """`metric.map(keep)`, asking `keep` once per distinct name (a long table repeats each name for every spectrum)."""
    return metric.isin([m for m in metric.unique() if keep(m)])


def aggregate(long: pd.DataFrame, last_k: int,
              rho_aggregation: str = "layer_median") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run medians, per-layer medians) for both phases: trained (last K logged steps > 0) and step0. The per-run
    table also holds the derived rows, TII and ρ_α (`derived_rows`); the per-layer one only measured metrics."""
    keys = ("run", "bucket", "site", "metric")
    per_run, per_layer = [], []
    for phase, part, k in (("trained", long[long["step"] > 0], last_k), ("step0", long[long["step"] == 0], 1)):
        if part.empty:
            continue
        agg = aggregate_checkpoints_and_layers(part, last_k=k, group_cols=keys)
        meta = part.groupby(list(keys))[["N", "D", "N_over_D"]].min().reset_index()
        measured = agg.per_run.merge(meta, on=list(keys))
        per_run += [measured.assign(phase=phase), derived_rows(part, measured, k, rho_aggregation).assign(phase=phase)]
        per_layer.append(agg.per_layer.assign(phase=phase))
    return pd.concat(per_run, ignore_index=True), pd.concat(per_layer, ignore_index=True)


# --- derived per-run quantities: rows of ranks.csv beside the measured metrics (docs/science.md §5) ----------------
TII_METRIC, TII_BUCKET = "tii", "TAIL-HEAD"  # ranks.csv: metric "tii", bucket "TAIL-HEAD", site "post"
RHO_SITE = "post/pre"  # ranks.csv: metric "rho_<α>" (from "renyi_<α>"), site "post/pre", per bucket
_ROW_COLUMNS = ["run", "bucket", "site", "metric", "median", "sd", "n_layers", "N", "D", "N_over_D"]


def rho_metric(renyi_metric: str) -> str:
    """'renyi_0.5' → 'rho_0.5'."""
    return "rho_" + renyi_metric.removeprefix(RENYI_PREFIX)


def derived_rows(part: pd.DataFrame, measured: pd.DataFrame, last_k: int, rho_aggregation: str) -> pd.DataFrame:
    """TII and ρ_α rows of one phase, with ranks.csv's columns. part: the phase's long table (one row per run, step,
    layer, site, bucket, metric); measured: its per-run rows (median over the last K steps, then over layers)."""
    if rho_aggregation not in RHO_AGGREGATIONS:
        raise ValueError(f"fit.rho_aggregation {rho_aggregation!r} is not one of {', '.join(RHO_AGGREGATIONS)}")
    rho = rho_layer_median(part, last_k) if rho_aggregation == "layer_median" else rho_median_ratio(measured)
    parts = [df.reindex(columns=_ROW_COLUMNS) for df in (tii_rows(part, last_k), rho) if not df.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_ROW_COLUMNS)


def tii_rows(part: pd.DataFrame, last_k: int) -> pd.DataFrame:
    """Tail Integrity Index per run: at each logged step the authors' TII (mean over the layers that have both
    buckets of hard_post(TAIL) − hard_post(HEAD), `spectra.tail_integrity_index`), then the median over the last K
    steps. sd: ±1 SD (ddof 1) across layers of each layer's median difference; N: the smaller bucket's."""
    sel = part[(part["metric"] == "hard_rank") & (part["site"] == "post") & part["bucket"].isin(["HEAD", "TAIL"])]
    wide = sel.set_index(["run", "step", "layer", "bucket"])["value"].unstack("bucket")
    if not {"HEAD", "TAIL"} <= set(wide.columns):
        return pd.DataFrame(columns=_ROW_COLUMNS)
    wide = wide.dropna(subset=["HEAD", "TAIL"]).reset_index()  # a skipped bucket: that layer does not count
    if wide.empty:
        return pd.DataFrame(columns=_ROW_COLUMNS)
    per_step = [{"run": run, "step": step, "tii": tail_integrity_index(g["TAIL"], g["HEAD"])}
                for (run, step), g in wide.groupby(["run", "step"])]
    last = pd.DataFrame(per_step).sort_values(["run", "step"]).groupby("run").tail(last_k)
    out = last.groupby("run")["tii"].median().rename("median").to_frame()
    spread = aggregate_checkpoints_and_layers(wide.assign(value=wide["TAIL"] - wide["HEAD"]), last_k=last_k)
    out = out.join(spread.per_run.set_index("run")[["sd", "n_layers"]])
    out = out.join(sel.groupby("run")[["N", "D", "N_over_D"]].min()).reset_index()
    return out.assign(bucket=TII_BUCKET, site="post", metric=TII_METRIC)


def _pre_post(table: pd.DataFrame, index: list[str], value: str) -> pd.DataFrame:
    """Rényi rows at both sites, side by side: columns pre and post of `value`, with the post site's N, D, N/D."""
    sel = table[metric_rows(table["metric"], is_renyi) & table["site"].isin(["pre", "post"])]
    wide = sel.set_index([*index, "site"])[value].unstack("site")
    if not {"pre", "post"} <= set(wide.columns):
        return pd.DataFrame()
    meta = sel[sel["site"] == "post"].set_index(index)[["N", "D", "N_over_D"]]
    return wide[["pre", "post"]].join(meta).reset_index()


def rho_layer_median(part: pd.DataFrame, last_k: int) -> pd.DataFrame:
    """ρ_α as every other metric (§6): ρ = R_α(post)/R_α(pre) per layer and step, median over the last K steps per
    layer, then the median over layers (sd: ±1 SD of the layer medians)."""
    wide = _pre_post(part, ["run", "step", "layer", "bucket", "metric"], "value")
    if wide.empty:
        return pd.DataFrame(columns=_ROW_COLUMNS)
    wide["value"] = wide["post"] / wide["pre"].where(wide["pre"] != 0)  # R_pre = 0: ρ undefined (NaN)
    wide["metric"] = wide["metric"].map(rho_metric)
    keys = ("run", "bucket", "metric")
    agg = aggregate_checkpoints_and_layers(wide, last_k=last_k, group_cols=keys)
    meta = wide.groupby(list(keys))[["N", "D", "N_over_D"]].min().reset_index()
    return agg.per_run.merge(meta, on=list(keys)).assign(site=RHO_SITE)


def rho_median_ratio(measured: pd.DataFrame) -> pd.DataFrame:
    """ρ_α as the ratio of the per-run medians (§6 applied to R_α(post) and R_α(pre) separately); no sd."""
    wide = _pre_post(measured.rename(columns={"median": "value"}), ["run", "bucket", "metric"], "value")
    if wide.empty:
        return pd.DataFrame(columns=_ROW_COLUMNS)
    n_layers = measured[measured["site"] == "post"].set_index(["run", "bucket", "metric"])["n_layers"]
    wide = wide.join(n_layers, on=["run", "bucket", "metric"])
    wide["median"] = wide["post"] / wide["pre"].where(wide["pre"] != 0)
    return wide.assign(metric=wide["metric"].map(rho_metric), site=RHO_SITE, sd=math.nan)


def fit_groups(ranks: pd.DataFrame, layers: pd.DataFrame, runs: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """β per group × phase × bucket × site × metric (soft, hard and every Rényi rank) with the OLS interval, and the
    layer-bootstrap interval for soft and hard rank; labels of each group joined on."""
    info = runs.set_index("run")
    ranks = ranks.join(info[["group"]], on="run")
    ranks = ranks[metric_rows(ranks["metric"], lambda m: shown_in(m, BETAS_TABLE))]
    layers = layers.join(info[["group", "ffn_dim"]], on="run")
    # ascending width inside each group (groupby keeps row order): the OLS sums run in the same order every time
    points = ranks.sort_values("ffn_dim", kind="stable")
    betas = fit_points(points, GROUP_KEYS, width_col="ffn_dim", value_col="median")
    min_nd = points.groupby(GROUP_KEYS)["N_over_D"].min().rename("min_N_over_D")
    betas = betas.join(min_nd, on=GROUP_KEYS).assign(boot_low=math.nan, boot_high=math.nan)
    if n_boot:
        for i, row in betas[betas["fitted"] & betas["metric"].isin(FIT_METRICS)].iterrows():
            sel = layers[(layers["group"] == row["group"]) & (layers["phase"] == row["phase"])
                         & (layers["bucket"] == row["bucket"]) & (layers["site"] == row["site"])
                         & (layers["metric"] == row["metric"])]
            per_width = [g["value"].to_numpy() for _, g in sel.sort_values("ffn_dim").groupby("ffn_dim")]
            boot = bootstrap_beta(sorted(sel["ffn_dim"].unique()), per_width, n_boot=n_boot)
            betas.loc[i, ["boot_low", "boot_high"]] = boot.ci_low, boot.ci_high
    labels = runs.drop_duplicates("group").set_index("group")[["group_label", "optimizer", "seed", "seed_group",
                                                                "varied", "arms"]]
    return betas[BETA_COLUMNS].join(labels, on="group")


def fit_per_layer(layers: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """β fitted on each layer's checkpoint medians separately (soft and hard rank)."""
    info = runs.set_index("run")
    layers = layers[layers["metric"].isin(FIT_METRICS)].join(info[["group", "ffn_dim", "group_label"]], on="run")
    keys = ["group", "group_label", "phase", "bucket", "site", "metric", "layer"]
    out = fit_points(layers, keys, width_col="ffn_dim", value_col="value")
    return out[[*keys, "beta", "ci95_low", "ci95_high", "r2", "fitted"]]


def fit_seeds(betas: pd.DataFrame) -> pd.DataFrame:
    """Mean β across seeds with a t-interval, per seed group (groups equal but for the seed) with ≥ 2 seeds."""
    means = seed_means(betas, ["seed_group", "phase", "bucket", "site", "metric"])
    return means[means["n_seeds"] >= 2].reset_index(drop=True) if not means.empty else means


def write_seed_tables(long: pd.DataFrame, runs: pd.DataFrame, betas: pd.DataFrame, reference: str, kind: str,
                      out: Path, ranks: pd.DataFrame | None = None, primary: PrimarySpec | None = None,
                      site: str = "post") -> None:
    """betas_steps, betas_steps_seeds, betas_seeds, beta_gaps, beta_gaps_steps and claims (.csv). ranks: ranks.csv, to
    refit both sides of a comparison on shared widths (None: no refit); primary: fit.primary (None: its default)."""
    steps = betas_per_step(long, runs)
    steps.to_csv(out / "betas_steps.csv", index=False)
    seed_cols = ["seed_group", "step", "tokens", "bucket", "site", "metric"]
    (seed_means(steps, seed_cols) if not steps.empty else pd.DataFrame()).to_csv(out / "betas_steps_seeds.csv",
                                                                                 index=False)
    tables = claim_tables(betas, steps, runs, reference, kind, Primary.from_spec(primary or PrimarySpec()), site,
                          None if ranks is None else rank_points(ranks, runs),
                          None if steps.empty else step_points(long, runs))
    seeds_with_step0(fit_seeds(betas), tables.step0).to_csv(out / "betas_seeds.csv", index=False)
    tables.gaps.to_csv(out / "beta_gaps.csv", index=False)
    gaps = tables.gaps_steps
    if not gaps.empty:
        gaps["tokens"] = gaps["step"] * gaps["tokens_per_step"]
    gaps.to_csv(out / "beta_gaps_steps.csv", index=False)
    tables.claims.to_csv(out / "claims.csv", index=False)


def add_delta_column(betas: pd.DataFrame) -> pd.DataFrame:
    """Δ₁,₂ = β_soft − β_hard per group, phase, bucket and site, as a column on every row."""
    keys = ["group", "phase", "bucket", "site"]
    return betas.join(soft_minus_hard(betas, keys), on=keys)


def headline_json(betas: pd.DataFrame, site: str) -> dict[str, Any]:
    """{group label: {phase: {bucket: {beta_soft, beta_hard, delta}}}} of one site, for `dvc metrics`."""
    out: dict[str, Any] = {}
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS)]
    for row in sel.itertuples():
        cell = out.setdefault(row.group_label, {}).setdefault(row.phase, {}).setdefault(row.bucket, {})
        cell[f"beta_{display_name(row.metric)}"] = None if not row.fitted else round(float(row.beta), 4)
        if row.metric == "soft_rank" and row.fitted and not math.isnan(row.delta_soft_hard):
            cell["delta"] = round(float(row.delta_soft_hard), 4)
    return out


def write_fit_results(plan: StudyPlan, store: RunStore, out: Path) -> int:
    """Every results/ table of the fit stage; 0 on success, 1 when there is nothing to fit yet (said why)."""
    out.mkdir(exist_ok=True)
    fit_cfg = plan.study.fit
    runs = collect_runs(plan, store)
    if runs.empty:
        print("[fit] no finished training runs")
        return 1
    runs.to_csv(out / "runs.csv", index=False)
    val_steps(runs, store).to_csv(out / "val_steps.csv", index=False)
    train_curves(runs, store).to_csv(out / "train_curves.csv", index=False)
    ppl = {r.label: {"val_ppl": None if r.diverged else round(float(r.val_ppl), 3), "diverged": bool(r.diverged)}
           for r in runs.itertuples()}
    (out / "perplexity.json").write_text(json.dumps(ppl, indent=2, sort_keys=True))
    long = long_ranks(runs, store)
    if long.empty:
        print("[fit] no measured runs yet")
        return 1
    low = long[(long["N_over_D"] < MIN_N_OVER_D)]
    if len(low):
        print(f"[fit] WARNING: {low.groupby(['run', 'step', 'layer', 'site', 'bucket']).ngroups} spectra have "
              f"N < {MIN_N_OVER_D:g}·D (min N/D {low['N_over_D'].min():.2f}); hard rank is biased there")
    ranks, layers = aggregate(long, int(fit_cfg.last_k), str(fit_cfg.rho_aggregation))
    ranks = ranks.join(runs.set_index("run")[["label", "group_label", "optimizer", "width_mult", "ffn_dim", "seed"]],
                       on="run")
    ranks.to_csv(out / "ranks.csv", index=False)
    betas = add_delta_column(fit_groups(ranks, layers, runs, int(fit_cfg.bootstrap)))
    # a β over widths made by different code is flagged
    betas = betas.join(mixed_groups(plan, store), on="group").fillna({"mixed_code": "", "mixed_spec": ""})
    warn_mixed(betas)
    betas.to_csv(out / "betas.csv", index=False)
    fit_per_layer(layers, runs).to_csv(out / "betas_per_layer.csv", index=False)
    write_seed_tables(long, runs, betas, str(fit_cfg.reference_optimizer), str(fit_cfg.gap_interval), out, ranks,
                      fit_cfg.primary, str(fit_cfg.headline_site))
    shared_width_fits(ranks, runs, GROUP_KEYS[1:], FIT_METRICS).to_csv(out / "betas_shared.csv", index=False)
    (out / "betas.json").write_text(json.dumps(headline_json(betas, fit_cfg.headline_site), indent=2, sort_keys=True))
    print_beta_table(betas, fit_cfg.headline_site)
    return 0


def warn_mixed(betas: pd.DataFrame) -> None:
    """Name each group whose widths were made by different code or differ in more than the width."""
    mixed = betas.drop_duplicates("group")
    mixed = mixed[(mixed["mixed_code"] != "") | (mixed["mixed_spec"] != "")]
    for row in mixed.itertuples():
        what = "; ".join(x for x in (row.mixed_code, row.mixed_spec and f"spec: {row.mixed_spec}") if x)
        print(f"[fit] WARNING: the widths of {row.group_label} were made by different code or spec ({what}); "
              f"its β is flagged in betas.csv (mixed_code, mixed_spec)")


def print_beta_table(betas: pd.DataFrame, site: str) -> None:
    """The console summary: trained / step-0 β with the OLS interval, per group and bucket."""
    sel = betas[(betas["site"] == site) & betas["metric"].isin(FIT_METRICS)]
    print(f"[fit] β ({site} site): trained / step 0; OLS 95% interval; '—' = not fitted (< 3 widths)")
    for (label, bucket), part in sel.groupby(["group_label", "bucket"]):
        cells = []
        for metric in FIT_METRICS:
            vals = {}
            for phase in ("trained", "step0"):
                r = part[(part["metric"] == metric) & (part["phase"] == phase)]
                vals[phase] = (f"{r['beta'].iloc[0]:.2f}" if len(r) and r["fitted"].iloc[0] else "—")
            r = part[(part["metric"] == metric) & (part["phase"] == "trained")]
            ci = (f" [{r['ci95_low'].iloc[0]:.2f}, {r['ci95_high'].iloc[0]:.2f}]"
                  if len(r) and r["fitted"].iloc[0] else "")
            cells.append(f"{display_name(metric)} {vals['trained']}{ci} / {vals['step0']}")
        print(f"  {label:<28} {bucket:<7} " + "   ".join(cells))
