"""The report's figures as altair charts. Each function takes a long table (figure_data.py, or a table of
results/compare/) and a title, and returns a chart, or None when its data are absent (the report then says so).
Which figure shows what, under which title, is in report_sections.SECTIONS."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from specscale.tokens.sets import ALL_SETS

LOG = alt.Scale(type="log")
PANEL = {"width": 170, "height": 140}
STROKE_LEGEND = alt.Legend(symbolType="stroke")  # a dashed-line legend, not circles


def _facet(chart: alt.Chart | alt.LayerChart, data: pd.DataFrame, title: str, row: str | None = "metric",
           column: str | None = "bucket") -> alt.FacetChart:
    kwargs = {}
    if row:
        kwargs["row"] = alt.Row(f"{row}:N", title=None)
    if column:
        sort = list(ALL_SETS) if column == "bucket" else "ascending"
        kwargs["column"] = alt.Column(f"{column}:N", sort=sort, title=None)
    return chart.properties(**PANEL).facet(data=data, **kwargs).properties(title=title)


def rank_vs_width(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    """Measured ranks (points, ±1 SD band of layer medians) and the fitted power law (line), log–log."""
    if data.empty:
        return None
    dims = sorted(data.loc[data["kind"] == "measured", "ffn_dim"].unique().tolist())
    base = alt.Chart().encode(x=alt.X("ffn_dim:Q", scale=LOG, title="FFN width D", axis=alt.Axis(values=dims)),
                              color=alt.Color("display:N", title="optimizer"))
    measured = base.transform_filter(alt.datum.kind == "measured")
    band = measured.mark_area(opacity=0.15).encode(y=alt.Y("low:Q", scale=LOG, title="effective rank"), y2="high:Q")
    points = measured.mark_point(filled=True, size=40).encode(
        y=alt.Y("rank:Q", scale=LOG),
        tooltip=["display", "bucket", "metric", "ffn_dim", alt.Tooltip("rank:Q", format=".1f")])
    line = base.transform_filter(alt.datum.kind == "fit").mark_line().encode(y=alt.Y("rank:Q", scale=LOG))
    # Points first: the legend takes its symbols from the first layer (the band's would be nearly transparent).
    return _facet(alt.layer(points, line, band), data, title).resolve_scale(y="independent")


def beta_intervals(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    """β per group with its interval; step-0 baseline and (with seeds) the between-seed interval beside it."""
    if data.empty:
        return None
    order = sorted(data["series"].unique(), key=lambda s: (s != "trained", s != "step 0", s))
    base = alt.Chart().encode(y=alt.Y("display:N", title=None), yOffset=alt.YOffset("series:N", sort=order),
                              color=alt.Color("series:N", title=None, sort=order))
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("low:Q", title="β"), x2="high:Q")
    points = base.mark_point(filled=True, size=35).encode(
        x="beta:Q", tooltip=["display", "bucket", "metric", "series", alt.Tooltip("beta:Q", format=".3f"),
                             alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f")])
    return _facet(alt.layer(points, bars), data, title)


def deltas(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    if data.empty:
        return None
    chart = alt.Chart().mark_bar().encode(
        x=alt.X("display:N", title=None), xOffset="phase:N",
        y=alt.Y("delta:Q", title="Δ₁,₂ = β_soft − β_hard"), color=alt.Color("phase:N", title=None),
        tooltip=["display", "bucket", "phase", alt.Tooltip("delta:Q", format=".3f")])
    return _facet(chart, data, title, row=None)


def perplexity(data: pd.DataFrame, title: str) -> alt.Chart | None:
    """Validation perplexity against width per group with ≥ 2 widths (diverged runs are left out, see the tables)."""
    if data.empty:
        return None
    sel = data[~data["diverged"].astype(bool)]
    sel = sel[sel.groupby("display")["width_mult"].transform("nunique") >= 2]
    if sel.empty:
        return None
    return alt.Chart(sel).mark_line(point=True).encode(
        x=alt.X("width_mult:Q", scale=alt.Scale(type="log", base=2), title="width multiplier k (D = k·d_model)",
                axis=alt.Axis(values=sorted(sel["width_mult"].unique().tolist()))),
        y=alt.Y("val_ppl:Q", scale=alt.Scale(zero=False), title="validation perplexity"),
        color=alt.Color("display:N", title=None),
        strokeDash=alt.StrokeDash("family:N", title="family", legend=STROKE_LEGEND),
        tooltip=["display", "width_mult", alt.Tooltip("val_ppl:Q", format=".2f")],
    ).properties(width=520, height=300, title=title)


def eigen_decay(data: pd.DataFrame, title: str) -> alt.Chart | None:
    if data.empty:
        return None
    data = data.assign(series=data["display"] + " (D=" + data["ffn_dim"].astype(str) + ")")
    return alt.Chart(data).mark_line().encode(
        x=alt.X("mode:Q", scale=LOG, title="eigenvalue index i"),
        y=alt.Y("p:Q", scale=LOG, title="λ_i / Σλ (median over layers)"),
        color=alt.Color("series:N", title=None), strokeDash=alt.StrokeDash("phase:N", title=None, legend=STROKE_LEGEND),
    ).properties(width=520, height=300, title=title)


def _clipped_scale(values: pd.Series, extra: tuple[float, ...] = ()) -> alt.Scale:
    """A y axis that follows the estimates (intervals from few seeds or widths can be huge and are clipped)."""
    lo, hi = min([float(values.min()), *extra]), max([float(values.max()), *extra])
    pad = max(0.2, 0.25 * (hi - lo))
    return alt.Scale(domain=[lo - pad, hi + pad])


def beta_over_training(data: pd.DataFrame, title: str, seeds: pd.DataFrame | None = None) -> alt.FacetChart | None:
    """β against training tokens per optimizer: the mean over seeds (line), the between-seed 95% interval (band,
    clipped to the axis), each seed's own β (small open points; `seeds`: figure_data.beta_training_seed_points) and
    the step-0 β of the same runs (dashed rule: the untrained network's)."""
    if data.empty or not (data["kind"] == "trained").any():
        return None
    y_scale = _clipped_scale(data["beta"])
    if seeds is not None and len(seeds):
        # the seed points share the facet's data: one long table, told apart by `kind`
        data = pd.concat([data, seeds.assign(kind="seed")], ignore_index=True)
    base = alt.Chart().encode(color=alt.Color("display:N", title=None))
    trained = base.transform_filter(alt.datum.kind == "trained")
    x = alt.X("tokens:Q", title="training tokens")
    line = trained.mark_line(point=True, clip=True).encode(
        x=x, y=alt.Y("beta:Q", title="β", scale=y_scale),
        tooltip=["display", "step", alt.Tooltip("tokens:Q", format=",.0f"), alt.Tooltip("beta:Q", format=".3f"),
                 alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f"), "n_seeds"])
    band = trained.mark_area(opacity=0.15, clip=True).encode(x=x, y=alt.Y("low:Q", scale=y_scale), y2="high:Q")
    baseline = base.transform_filter(alt.datum.kind == "step 0").mark_rule(strokeDash=[4, 3], opacity=0.7).encode(
        y=alt.Y("beta:Q", scale=y_scale), tooltip=["display", alt.Tooltip("beta:Q", format=".3f", title="step-0 β")])
    points = base.transform_filter(alt.datum.kind == "seed").mark_point(shape="diamond", size=18, opacity=0.7,
                                                                         clip=True).encode(
        x=x, y=alt.Y("beta:Q", scale=y_scale),
        tooltip=["display", "seed", "step", alt.Tooltip("beta:Q", format=".3f")])
    return _facet(alt.layer(line, band, points, baseline), data, title)


def gap_over_training(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    """β(optimizer) − β(reference) against training tokens: the across-seed 95% interval at each step (darker
    band), the band simultaneous over the kept steps the claims are judged on (lighter, wider band) and 0."""
    if data.empty:
        return None
    y_scale = _clipped_scale(data["diff"], (0.0,))
    base = alt.Chart().encode(x=alt.X("tokens:Q", title="training tokens"),
                              color=alt.Color("comparison:N", title=None))
    line = base.mark_line(point=True, clip=True).encode(
        y=alt.Y("diff:Q", title="Δβ", scale=y_scale),
        tooltip=["comparison", "step", alt.Tooltip("diff:Q", format="+.3f"), alt.Tooltip("low:Q", format="+.3f"),
                 alt.Tooltip("high:Q", format="+.3f"), alt.Tooltip("band_low:Q", format="+.3f"),
                 alt.Tooltip("band_high:Q", format="+.3f"), "n_seeds"])
    band = base.mark_area(opacity=0.2, clip=True).encode(y=alt.Y("low:Q", scale=y_scale), y2="high:Q")
    simultaneous = base.mark_area(opacity=0.08, clip=True).encode(y=alt.Y("band_low:Q", scale=y_scale),
                                                                  y2="band_high:Q")
    zero = alt.Chart().mark_rule(color="gray").encode(y=alt.datum(0))
    # a legend of lines, drawn opaque (the bands' opacity would otherwise fade its symbols)
    return _facet(alt.layer(line, band, simultaneous, zero), data, title).configure_legend(
        symbolType="stroke", symbolOpacity=1)


def _renyi_sel(data: pd.DataFrame) -> pd.DataFrame:
    """Base optimizers, lowest seed, widest width of each."""
    sel = data[(data["family"] == "base") & (data["seed"] == data["seed"].min())]
    return sel[sel["width_mult"] == sel.groupby("display")["width_mult"].transform("max")]


def _alpha_axis(data: pd.DataFrame) -> alt.X:
    order = data.drop_duplicates("alpha_label").sort_values("alpha")["alpha_label"].tolist()
    return alt.X("alpha_label:O", sort=order, title="α", axis=alt.Axis(labelAngle=0))


def renyi_ranks(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    if data.empty:
        return None
    sel = _renyi_sel(data).melt(id_vars=["display", "bucket", "alpha", "alpha_label"], value_vars=["pre", "post"],
                                var_name="site", value_name="rank")
    chart = alt.Chart().mark_line(point=True).encode(
        x=_alpha_axis(sel), y=alt.Y("rank:Q", scale=LOG, title="R_α"), color=alt.Color("display:N", title=None),
        strokeDash=alt.StrokeDash("site:N", title="site", legend=STROKE_LEGEND))
    return _facet(chart, sel, title, row=None)


def renyi_rho(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    if data.empty:
        return None
    sel = _renyi_sel(data)
    one = alt.Chart().mark_rule(color="gray", strokeDash=[3, 3]).encode(y=alt.datum(1))
    chart = alt.Chart().mark_line(point=True).encode(
        x=_alpha_axis(sel), y=alt.Y("rho:Q", title="ρ_α = R_α(post) / R_α(pre)"),
        color=alt.Color("display:N", title=None),
        tooltip=["display", "alpha_label", alt.Tooltip("rho:Q", format=".3f")])
    return _facet(alt.layer(one, chart), sel, title, row=None)


def arch_vs_optimizer(table: pd.DataFrame, title: str) -> alt.FacetChart | None:
    """Per comparison: the architecture shift |β_ablated − β_base| (point) and the optimizer gain (tick)."""
    if table.empty:
        return None
    sel = table[table["status"] != "missing"].copy()
    if sel.empty:
        return None
    sel["comparison"] = sel["ablation"] + " · " + sel["optimizer"]
    sel["metric"] = sel["metric"].str.replace("_rank", "")
    long = sel.melt(id_vars=["comparison", "bucket", "metric", "status"], value_vars=["arch_shift", "optimizer_gain"],
                    var_name="quantity", value_name="value")
    long["quantity"] = long["quantity"].map({"arch_shift": "architecture shift |Δβ|",
                                             "optimizer_gain": "optimizer gain max β − β_ref"})
    chart = alt.Chart().mark_point(filled=True, size=60).encode(
        x=alt.X("value:Q", title="β difference"), y=alt.Y("comparison:N", title=None),
        color=alt.Color("quantity:N", title=None), shape=alt.Shape("quantity:N", title=None),
        tooltip=["comparison", "bucket", "metric", "quantity", "status", alt.Tooltip("value:Q", format=".3f")])
    return _facet(chart, long, title)


def postln(table: pd.DataFrame, title: str) -> alt.Chart | None:
    """The PostLN table as a heatmap with the perplexity (or ×) written in each cell."""
    if table.empty:
        return None
    ids = [c for c in ("optimizer", "width_mult", "seed") if c in table.columns]
    long = table.melt(id_vars=ids, var_name="postln", value_name="cell")
    long["cell"] = [c if isinstance(c, str) else f"{c:.1f}" for c in long["cell"]]  # a column read as numbers
    long = long[~long["cell"].isin(["", "nan"])]
    long["row"] = long["optimizer"] + " k=" + long["width_mult"].astype(str)
    long["ppl"] = pd.to_numeric(long["cell"], errors="coerce")
    order = [c for c in table.columns if c not in ids]
    top = alt.Axis(labelAngle=0, orient="top")
    base = alt.Chart(long).encode(x=alt.X("postln:N", sort=order, title=None, axis=top), y=alt.Y("row:N", title=None))
    rect = base.mark_rect().encode(color=alt.Color("ppl:Q", scale=alt.Scale(scheme="oranges"),
                                                   title="val. perplexity"))
    text = base.mark_text(fontSize=13).encode(text="cell:N")
    return alt.layer(rect, text).properties(width=80 * len(order), height=26 * long["row"].nunique(), title=title)


def paper_scatter(table: pd.DataFrame, title: str) -> alt.Chart | None:
    """Our β against the published β, one point per optimizer × bucket × metric, with the identity line."""
    if table.empty:
        return None
    sel = table[(table["kind"] == "beta") & table["ours"].notna() & table["paper"].notna()].copy()
    if sel.empty:
        return None
    sel["label"] = sel["optimizer"] + " " + sel["setting"].fillna("")
    lim = [0.0, float(max(1.2, np.nanmax(sel[["paper", "ours"]].to_numpy()) * 1.05))]
    diag = alt.Chart(pd.DataFrame({"x": lim, "y": lim})).mark_line(color="gray", strokeDash=[4, 4]).encode(
        x="x:Q", y="y:Q")
    pts = alt.Chart(sel).mark_point(filled=True, size=70).encode(
        x=alt.X("paper:Q", title="published β", scale=alt.Scale(domain=lim)),
        y=alt.Y("ours:Q", title="our β", scale=alt.Scale(domain=lim)),
        color=alt.Color("label:N", title=None), shape=alt.Shape("metric:N", title=None),
        tooltip=["label", "bucket", "metric", alt.Tooltip("paper:Q", format=".2f"),
                 alt.Tooltip("ours:Q", format=".3f")])
    return alt.layer(diag, pts).properties(width=360, height=360, title=title)



def loss_curves(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    """Training loss against tokens per configuration, one panel per width: the mean over seeds (line) and the band
    from the lowest to the highest seed (figure_data.loss_curve_data)."""
    if data.empty:
        return None
    base = alt.Chart().encode(x=alt.X("tokens:Q", title="training tokens"), color=alt.Color("display:N", title=None))
    y_scale = alt.Scale(zero=False)
    line = base.mark_line(clip=True).encode(
        y=alt.Y("loss:Q", scale=y_scale, title="training loss (nats/token)"),
        tooltip=["display", "width_mult", "step", alt.Tooltip("loss:Q", format=".3f"), "n_seeds"])
    band = base.mark_area(opacity=0.2, clip=True).encode(y=alt.Y("low:Q", scale=y_scale), y2="high:Q")
    return (alt.layer(line, band).properties(**PANEL)
            .facet(data=data, column=alt.Column("width_mult:O", title="width multiplier k"))
            .properties(title=title).configure_legend(symbolType="stroke", symbolOpacity=1))


def layer_heatmap(data: pd.DataFrame, title: str) -> alt.FacetChart | None:
    """β per layer (columns) and configuration (rows), one panel per bucket and metric, value written in each cell."""
    if data.empty:
        return None
    base = alt.Chart().encode(x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
                              y=alt.Y("display:N", title=None))
    rect = base.mark_rect().encode(color=alt.Color("beta:Q", scale=alt.Scale(scheme="viridis"), title="β"),
                                   tooltip=["display", "layer", "bucket", "metric",
                                            alt.Tooltip("beta:Q", format=".3f"), "n_seeds"])
    text = base.mark_text(fontSize=10, color="white").encode(text=alt.Text("beta:Q", format=".2f"))
    return _facet(alt.layer(rect, text), data, title)


def claims_forest(data: pd.DataFrame, title: str) -> alt.Chart | None:
    """Every claim's estimate with its unadjusted and family-adjusted intervals (figure_data.claims_forest_data);
    the primary endpoint in bold; 0 marked."""
    if data.empty:
        return None
    order = data.sort_values(["primary", "family", "claim"], ascending=[False, True, True])["claim"].unique().tolist()
    base = alt.Chart(data).encode(y=alt.Y("claim:N", sort=order, title=None, axis=alt.Axis(labelLimit=420)),
                                  yOffset=alt.YOffset("interval:N"),
                                  color=alt.Color("interval:N", title=None))
    bars = base.mark_rule().encode(x=alt.X("low:Q", title="estimate with 95% interval"), x2="high:Q",
                                   strokeWidth=alt.condition(alt.datum.primary, alt.value(4), alt.value(1.5)))
    points = base.mark_point(filled=True).encode(
        x="estimate:Q", shape=alt.Shape("verdict:N", title="verdict"),
        size=alt.condition(alt.datum.primary, alt.value(120), alt.value(40)),
        tooltip=["claim", "family", "interval", "verdict", alt.Tooltip("estimate:Q", format="+.3f"),
                 alt.Tooltip("low:Q", format="+.3f"), alt.Tooltip("high:Q", format="+.3f")])
    zero = alt.Chart().mark_rule(color="gray", strokeDash=[3, 3]).encode(x=alt.datum(0))
    return alt.layer(zero, bars, points).properties(width=420, height=alt.Step(16), title=title)
