"""The report builds from a small synthetic results set: every figure and its PNG, an index.html that renders with
no network, the summary tables; and the compare stage's files on the same set.

The synthetic set has every family the report knows (main sweep with 2 seeds, a heads ablation, a steps ablation,
PostLN with one diverged run): spectra are power laws λ_i ∝ i^(−a) with a per optimizer, so the fit stage's own
functions turn them into results/*.csv exactly as in a real study.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specscale.fit.curves import train_curves
from specscale.store.runs import RunStore, stable_hash
from specscale.measure.metrics import hard_rank, renyi_rank, soft_rank

D_MODEL, LAYERS, STEPS, ALPHAS = 16, 2, (0, 30, 40), (0.0, 0.5, 1.0, 2.0, float("inf"))
BUCKETS = {"HEAD": 0.15, "MID": 0.05, "TAIL": 0.0, "GLOBAL": 0.02}  # decay offsets: HEAD concentrates most
DECAY = {"adamw": 0.9, "muon": 0.5, "normuon": 0.45}
PPL = {"adamw": 60.0, "muon": 50.0, "normuon": 49.0}


def _arms() -> list[dict]:
    """(optimizer, extra, varied, widths, seeds, steps) per group of runs."""
    arms = [dict(opt=o, extra="", varied={}, widths=[1, 2, 4], seed=s, steps=40) for o in DECAY for s in (0, 1)]
    arms += [dict(opt=o, extra="", varied={"model.n_heads": 4}, widths=[1, 2, 4], seed=0, steps=40)
             for o in ("adamw", "muon")]
    arms.append(dict(opt="adamw", extra="", varied={"train.steps": 80}, widths=[1, 2, 4], seed=0, steps=80))
    arms += [dict(opt=o, extra=e, varied={"model.postln_fraction": f}, widths=[2], seed=0, steps=40)
             for o, e in (("adamw", "lr=0.0001"), ("muon", "")) for f in (0.5, 1.0)]
    return arms


def _decay(arm: dict, site: str, bucket: str, step: int, layer: int) -> float:
    if step == 0:
        return 0.3 + BUCKETS[bucket]
    a = DECAY[arm["opt"]] + BUCKETS[bucket] + 0.03 * layer - (0.1 if site == "pre" else 0.0)
    a += 0.05 * ("model.n_heads" in arm["varied"]) + 0.05 * ("train.steps" in arm["varied"])
    return a + 0.01 * arm["seed"] + (0.02 if step == STEPS[1] else 0.0)


def _loss(ppl: float, seed: int, step: int) -> float:
    """A synthetic training loss: linear from 6 at step 0 to ln(ppl) at step 40, seed 1 above seed 0 by 0.1."""
    return 6.0 + (math.log(ppl) - 6.0) * min(step, 40) / 40 + 0.1 * seed


def make_results(root: Path) -> Path:
    """A project at root with runs/spectra/<key>/{ranks.csv, spectra.zarr} and results/*.csv; returns results/."""
    import xarray as xr

    from specscale.fit import fit as fit_stage

    runs = []
    for arm in _arms():
        varied = json.dumps(arm["varied"], sort_keys=True)
        group = stable_hash({**arm, "widths": None})
        seed_group = stable_hash({**arm, "widths": None, "seed": None})
        label = " ".join([arm["opt"], *(f"{k.split('.')[-1]}={v}" for k, v in arm["varied"].items())])
        for k in arm["widths"]:
            D = k * D_MODEL
            diverged = arm["varied"].get("model.postln_fraction") == 1.0 and arm["opt"] == "adamw"
            ppl = 5000.0 if diverged else PPL[arm["opt"]] * (1 - 0.05 * k) * (0.9 if arm["steps"] == 80 else 1.0)
            key = stable_hash({"g": group, "k": k})
            runs.append({"run": key, "spectra_key": "s" + key, "label": f"{label} k={k}", "arms": "x",
                         "group": group, "seed_group": seed_group, "group_label": label, "optimizer": arm["opt"],
                         "width_mult": k, "ffn_dim": D, "seed": arm["seed"], "steps": arm["steps"],
                         "tokens_per_step": 1024, "optim_extra": arm["extra"],
                         "config": " ".join(x for x in (label, arm["extra"]) if x),
                         "varied": varied, "val_loss": float(np.log(ppl)), "val_ppl": ppl, "diverged": diverged,
                         "measured": not diverged, "_arm": arm})
            if diverged:
                continue
            spectra = root / "runs" / "spectra" / ("s" + key)
            spectra.mkdir(parents=True)
            eig = np.zeros((len(STEPS), LAYERS, 2, len(BUCKETS), D))
            rows = []
            for i, step in enumerate(STEPS):
                for layer in range(LAYERS):
                    for j, site in enumerate(("pre", "post")):
                        for b, bucket in enumerate(BUCKETS):
                            lam = np.arange(1, D + 1, dtype=float) ** -_decay(arm, site, bucket, step, layer)
                            eig[i, layer, j, b] = lam
                            N = 2048 if bucket == "GLOBAL" else 1024
                            row = {"step": step, "layer": layer, "site": site, "bucket": bucket, "N": N, "D": D,
                                   "N_over_D": N / D, "soft_rank": soft_rank(lam), "hard_rank": hard_rank(lam)}
                            row.update({f"renyi_{a:g}": renyi_rank(lam, a) for a in ALPHAS})
                            rows.append(row)
            pd.DataFrame(rows).to_csv(spectra / "ranks.csv", index=False)
            if not arm["varied"] and k == max(arm["widths"]):  # the eigen-decay figure reads the widest only
                with warnings.catch_warnings():  # zarr: "fixed-length strings have no v3 specification"
                    warnings.simplefilter("ignore")
                    xr.Dataset({"eigenvalues": (("step", "layer", "site", "bucket", "mode"), eig)},
                               coords={"step": list(STEPS), "layer": list(range(LAYERS)), "site": ["pre", "post"],
                                       "bucket": list(BUCKETS), "mode": list(range(D))}
                               ).to_zarr(str(spectra / "spectra.zarr"), consolidated=False)
    runs_df = pd.DataFrame(runs)
    extras = {r["run"]: r["_arm"]["extra"] for r in runs}
    runs_df = runs_df.drop(columns="_arm")
    out = root / "results"
    out.mkdir(parents=True)
    runs_df.to_csv(out / "runs.csv", index=False)
    # The fit stage's own functions: the same columns and aggregation as a real study.
    store = RunStore(root)
    ranks, layers = fit_stage.aggregate(fit_stage.long_ranks(runs_df, store), 2)
    ranks = ranks.join(runs_df.set_index("run")[["label", "group_label", "optimizer", "width_mult", "ffn_dim",
                                                 "seed"]], on="run")
    ranks.to_csv(out / "ranks.csv", index=False)
    betas = fit_stage.add_delta_column(fit_stage.fit_groups(ranks, layers, runs_df, 0))
    betas.to_csv(out / "betas.csv", index=False)
    fit_stage.fit_seeds(betas).to_csv(out / "betas_seeds.csv", index=False)
    fit_stage.fit_per_layer(layers, runs_df).to_csv(out / "betas_per_layer.csv", index=False)
    for r in runs_df.itertuples():  # a training log per run: loss 6 → PPL's log over 40 steps, one seed 0.1 above
        log = root / "runs" / "train" / r.run / "log.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(json.dumps({"step": step, "loss": _loss(r.val_ppl, r.seed, step)}) + "\n"
                               for step in range(1, r.steps + 1)))
    train_curves(runs_df, store, max_points=20).to_csv(out / "train_curves.csv", index=False)
    fit_stage.write_seed_tables(fit_stage.long_ranks(runs_df, store), runs_df, betas, "adamw", "welch", out)
    val = [{"run": r.run, "config": r.config, "optimizer": r.optimizer, "width_mult": r.width_mult, "seed": r.seed,
            "step": step, "tokens": step * 1024, "val_loss": math.log(r.val_ppl * (1 + (40 - step) / 40)),
            "val_ppl": r.val_ppl * (1 + (40 - step) / 40)} for r in runs_df.itertuples() for step in STEPS]
    pd.DataFrame(val).to_csv(out / "val_steps.csv", index=False)
    (out / "extras.json").write_text(json.dumps(extras))
    return out


CONTEXT = {"preset": "synthetic", "reference_optimizer": "adamw",
           "sweep": {"optimizers": list(DECAY), "widths": [1, 2, 4], "seeds": [0, 1]},
           "ablations": {"heads": {"vary": {"model.n_heads": [4]}}}, "probe": {"tokens_per_bucket": 1024}}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Synthetic results → compare stage → report; returns the project root."""
    from specscale.compare.compare import write_compare
    from specscale.report.report import build_report

    root = tmp_path_factory.mktemp("proj")
    results = make_results(root)
    extras = json.loads((results / "extras.json").read_text())
    write_compare(results, root / "runs" / "spectra", "synthetic", "adamw", extras)
    build_report(results, root / "report", CONTEXT, choices=["Probe set: a fixed held-out set."])
    return root


def test_compare_files_on_synthetic_set(built: Path) -> None:
    out = built / "results" / "compare"
    arch = json.loads((out / "arch_vs_optimizer.json").read_text())
    # 2 ablated optimizers × 3 counted buckets × 2 metrics × 1 seed; no cell is missing
    assert arch["n"] == 12 and not arch["missing"]
    assert any("postln" in s for s in arch["skipped"])  # the PostLN groups have one width: not width sweeps
    postln = pd.read_csv(out / "postln.csv")
    assert postln.loc[postln["optimizer"] == "adamw lr=0.0001", "Full"].item() == "×"
    assert postln.loc[postln["optimizer"] == "muon", "Full"].item() != "×"
    ml = pd.read_csv(out / "matched_loss_beta.csv")
    assert set(ml["pair"]) == {"adamw steps=80 seed=0"} and ml["beta_long"].notna().all()
    assert set(ml["closest_ppl"]) == {"muon seed=0"}  # the base optimizer of closest perplexity
    steps = pd.read_csv(built / "results" / "betas_steps_seeds.csv")
    assert set(steps["step"]) == set(STEPS) and set(steps["tokens"]) == {1024 * s for s in STEPS}
    main = steps[(steps["varied"] == "{}") & (steps["step"] == 40)]
    assert set(main["n_seeds"]) == {2}  # the main sweep has 2 seeds per optimizer
    gaps = pd.read_csv(built / "results" / "beta_gaps.csv")
    assert set(gaps["comparison"]) >= {"muon − adamw", "normuon − adamw", "muon n_heads=4 − adamw n_heads=4"}
    assert (pd.read_csv(out / "renyi.csv")["rho"] > 0).all()
    assert not pd.read_csv(out / "eigen_decay.csv").empty
    assert json.loads((out / "rank_width.json").read_text())  # dvc plots data
    assert json.loads((built / "results" / "compare.json").read_text())["arch_vs_optimizer"]["n"] == 12


def test_report_shows_perplexity_over_training(built: Path) -> None:
    summary = (built / "report" / "summary.md").read_text()
    assert "Validation perplexity at kept steps, mean over seeds (no interval); n = 2 seeds at most per cell" in summary
    assert "| muon | 4 | 80.000 | 50.000 | 40.000 |" in summary  # 50 × (1 − 0.05·4) = 40 at step 40, ×2 at step 0


def test_report_has_every_figure_offline(built: Path) -> None:
    from specscale.report.sections import FIGURES

    report = built / "report"
    html = (report / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?:", html, re.I), "a script is loaded from the network"
    assert not re.search(r"<link[^>]+href=[\"']?https?:", html, re.I)
    for name, fig in FIGURES.items():
        assert (report / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert fig.title in html, fig.title
    summary = (report / "summary.md").read_text()
    assert "synthetic" in summary and "| HEAD |" in summary
    assert "Probe set" in html  # the choices where the paper is silent


def test_report_says_what_is_missing(built: Path, tmp_path: Path) -> None:
    """One optimizer, no ablation, no seeds file, no spectra: every section still renders or says why not."""
    import shutil

    from specscale.compare.compare import write_compare
    from specscale.report.report import build_report

    results = tmp_path / "results"
    shutil.copytree(built / "results", results, ignore=shutil.ignore_patterns("compare*"))
    runs = pd.read_csv(results / "runs.csv")
    keep = runs[(runs["optimizer"] == "adamw") & (runs["varied"] == "{}") & (runs["seed"] == 0)]
    keep.to_csv(results / "runs.csv", index=False)
    betas = pd.read_csv(results / "betas.csv")
    betas[betas["group"].isin(keep["group"])].to_csv(results / "betas.csv", index=False)
    (results / "betas_seeds.csv").write_text("")
    write_compare(results, tmp_path / "runs" / "spectra", "smoke")
    build_report(results, tmp_path / "report", {"preset": "smoke"}, choices=[])
    html = (tmp_path / "report" / "index.html").read_text()
    assert "no architectural ablation" in html and "no PostLN" in html


def test_report_shows_training_curves_layers_and_seed_points(built: Path) -> None:
    """The loss figure's band is the lowest to the highest seed; the layer heatmap averages seeds; the β-over-training
    figure carries each seed's own β."""
    from specscale.compare.figure_data import beta_training_seed_points, layer_beta_data, loss_curve_data

    results = built / "results"
    curves = pd.read_csv(results / "train_curves.csv")
    assert curves.groupby("run").size().max() == 20  # 40 logged steps in blocks of 2 (80-step runs: blocks of 4)
    first = curves[(curves["config"] == "muon") & (curves["width_mult"] == 4) & (curves["seed"] == 0)].iloc[0]
    assert first["step"] == 2 and first["loss"] == pytest.approx((_loss(40.0, 0, 1) + _loss(40.0, 0, 2)) / 2)
    band = loss_curve_data(curves)
    cell = band[(band["display"] == "muon") & (band["width_mult"] == 4) & (band["step"] == 40)].iloc[0]
    assert cell["n_seeds"] == 2 and cell["high"] - cell["low"] == pytest.approx(0.1)
    block_mean = [(_loss(40.0, seed, 39) + _loss(40.0, seed, 40)) / 2 for seed in (0, 1)]
    assert cell["loss"] == pytest.approx(sum(block_mean) / 2) and cell["low"] == pytest.approx(block_mean[0])
    layers = layer_beta_data(pd.read_csv(results / "betas_per_layer.csv"), pd.read_csv(results / "runs.csv"))
    assert set(layers["layer"]) == {0, 1} and set(layers.loc[layers["display"] == "muon", "n_seeds"]) == {2}
    points = beta_training_seed_points(pd.read_csv(results / "betas_steps.csv"))
    assert set(points.loc[points["display"] == "muon", "seed"]) == {0, 1} and (points["step"] > 0).all()
    spec = json.loads((built / "report" / "figures" / "beta_training.vl.json").read_text())
    assert "seed" in json.dumps(spec["datasets"])  # the seed points travel with the figure
    summary = (built / "report" / "summary.md").read_text()
    assert summary.index("## Results") < summary.index("## Study")  # the report opens with the results


def test_report_renders_in_a_real_browser(built: Path) -> None:
    """Headless Chromium (Debian's `chromium`), offline: every figure's div holds the SVG vega-embed drew, and none
    holds the 'figure failed to render' text the page puts there when Vega throws."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it when it can")
    page = (built / "report" / "index.html").resolve()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    drawn = dict(re.findall(r'<div id="fig-([a-z_0-9]+)"[^>]*>(.{0,40})', dom))
    made = {p.name.removesuffix(".vl.json") for p in (built / "report" / "figures").glob("*.vl.json")}
    assert len(made) >= 14 and set(drawn) == made, "a figure's div is missing from the rendered page"
    for name, start in drawn.items():
        assert start.startswith("<svg"), f"figure {name} did not render: {start!r}"
