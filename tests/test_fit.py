"""Scaling-law fits (specscale.fit.laws): the paper's table, hand-computed fits, aggregation, intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from specscale.fit.laws import (
    DELTA_METRIC,
    PAPER_BETA_TABLE,
    PAPER_RANK_POINTS,
    add_deltas,
    aggregate_checkpoints_and_layers,
    bootstrap_beta,
    fit_points,
    fit_points_cli,
    ols_loglog,
    seed_mean_interval,
)

from tolerances import rounding_tol

KEYS = ["model", "optimizer", "bucket", "metric"]
PAPER_TABLE = pd.read_csv(PAPER_BETA_TABLE)
F64 = np.float64
# Float64 rounding of one fit as compared with printed decimals: ~100 operations (logs, means, n-term sums, a ratio,
# the t quantile) on O(1) logs, plus the decimals' binary representation: ≈ 2e-13, far below any printed digit.
FIT_SLACK = rounding_tol(F64, 100)


def _ols_tols(widths, ranks) -> dict[str, float]:
    """Float64 rounding bounds of ols_loglog's outputs, from its formulas on these points (n of them):

    dx, dy (logs less their means): n + 2 roundings at L = the largest |log| (absolute, e_v each);
    β = Σdx·dy / Σdx²: e_v·(Σ|dy| + 3·Σ|dx|)/Sxx plus the two n-term sums' and the division's own;
    intercept = mean(ln r) − β·mean(ln D): e_v + |mean ln D|·δβ + 2 roundings at L;
    residuals dy − β·dx, SS_res and SS_tot (n-term sums), R² = 1 − SS_res/SS_tot; se = √(SS_res/(n − 2)/Sxx);
    the t quantile (scipy: correctly rounded at 1 and 2 degrees of freedom) counts 4.
    """
    lx, ly = np.log(np.asarray(widths, F64)), np.log(np.asarray(ranks, F64))
    n = lx.size
    dx, dy = lx - lx.mean(), ly - ly.mean()
    sxx = float(dx @ dx)
    beta = float(dx @ dy) / sxx
    L = float(max(np.abs(lx).max(), np.abs(ly).max()))
    e_v = rounding_tol(F64, n + 2, magnitude=L)
    d_beta = e_v * (np.abs(dy).sum() + 3 * np.abs(dx).sum()) / sxx
    d_beta += rounding_tol(F64, n + 1, magnitude=float(np.abs(dx * dy).sum()) / sxx + abs(beta))
    resid = dy - beta * dx
    ss_res, ss_tot = float(resid @ resid), float(dy @ dy)
    e_r = e_v * (1 + abs(beta)) + float(np.abs(dx).max()) * d_beta + rounding_tol(F64, 2, magnitude=L)
    d_res = 2 * float(np.abs(resid).sum()) * e_r + n * e_r**2 + rounding_tol(F64, n, magnitude=ss_res)
    d_tot = 2 * float(np.abs(dy).sum()) * e_v + rounding_tol(F64, n, magnitude=ss_tot)
    r2 = d_res / ss_tot + ss_res / ss_tot * d_tot / ss_tot + rounding_tol(F64, 2)
    se_rel = 0.5 * (d_res / ss_res + d_beta / abs(beta)) + rounding_tol(F64, 3) if ss_res > 0 else math.inf
    return {"beta": d_beta, "intercept": e_v + abs(float(lx.mean())) * d_beta + rounding_tol(F64, 2, magnitude=L),
            "r2": r2, "se_rel": se_rel, "t_rel": rounding_tol(F64, 4)}


@pytest.fixture(scope="module")
def our_table() -> pd.DataFrame:
    return fit_points(pd.read_csv(PAPER_RANK_POINTS))


def test_paper_files_ship_with_the_package() -> None:
    points = pd.read_csv(PAPER_RANK_POINTS)
    assert len(points) == 320 and len(PAPER_TABLE) == 40
    assert set(points.columns) >= {"model", "optimizer", "bucket", "metric", "width_mult", "ffn_dim", "rank"}


@pytest.mark.parametrize("row", PAPER_TABLE.to_dict("records"), ids=lambda r: "-".join(str(r[k]) for k in KEYS[1:]))
def test_fit_points_reproduces_every_published_fit(our_table: pd.DataFrame, row: dict) -> None:
    mine = our_table
    for k in KEYS:
        mine = mine[mine[k] == row[k]]
    assert len(mine) == 1
    got = mine.iloc[0]
    # published β has 4 decimals, interval and R² 3: agree to within half a unit of the last printed digit (plus the
    # fit's float64 rounding, FIT_SLACK)
    assert abs(got["beta"] - row["beta"]) <= 0.5e-4 + FIT_SLACK
    assert abs(got["ci95_low"] - row["ci95_low"]) <= 0.5e-3 + FIT_SLACK
    assert abs(got["ci95_high"] - row["ci95_high"]) <= 0.5e-3 + FIT_SLACK
    assert abs(got["r2"] - row["r2"]) <= 0.5e-3 + FIT_SLACK
    assert got["n_widths"] == row["n_widths"]
    assert bool(got["fitted"])


# docs/science.md §8: β_hard / β_soft / Δ by bucket (GPT-2 160M), published to 2 decimals. GLOBAL = pooled.
PUBLISHED_DELTAS = {
    ("adamw", "HEAD"): 0.18, ("adamw", "MID"): 0.21, ("adamw", "TAIL"): 0.18, ("adamw", "GLOBAL"): 0.37,
    ("muon", "HEAD"): 0.29, ("muon", "MID"): -0.04, ("muon", "TAIL"): 0.01, ("muon", "GLOBAL"): 0.14,
    ("normuon", "HEAD"): 0.47, ("normuon", "MID"): -0.02, ("normuon", "TAIL"): 0.00, ("normuon", "GLOBAL"): 0.21,
    ("dion_1_2", "HEAD"): 0.37, ("dion_1_2", "MID"): 0.15, ("dion_1_2", "TAIL"): 0.07, ("dion_1_2", "GLOBAL"): 0.13,
    ("dion_1_16", "HEAD"): 0.35, ("dion_1_16", "MID"): 0.22, ("dion_1_16", "TAIL"): 0.31, ("dion_1_16", "GLOBAL"): 0.24,
}  # fmt: skip


def test_add_deltas_matches_published_deltas(our_table: pd.DataFrame) -> None:
    table = add_deltas(our_table)
    deltas = table[table["metric"] == DELTA_METRIC].set_index(["optimizer", "bucket"])
    assert len(deltas) == 20 and len(table) == 60
    for (opt, bucket), published in PUBLISHED_DELTAS.items():
        row = deltas.loc[(opt, bucket)]
        soft = our_table.query("optimizer == @opt and bucket == @bucket and metric == 'soft_rank'")["beta"].item()
        hard = our_table.query("optimizer == @opt and bucket == @bucket and metric == 'hard_rank'")["beta"].item()
        # the same subtraction: one rounding at |β| ≤ 2
        assert row["beta"] == pytest.approx(soft - hard, abs=rounding_tol(F64, 1, magnitude=2.0))
        assert abs(row["beta"] - published) <= 0.005 + 2 * FIT_SLACK, (opt, bucket)  # half a unit at 2 decimals
        assert bool(row["fitted"]) and row["n_widths"] == 8
        assert math.isnan(row["ci95_low"]) and math.isnan(row["r2"])


def test_add_deltas_without_a_partner_metric_is_not_fitted() -> None:
    table = fit_points(
        pd.DataFrame(
            {
                "model": "m", "optimizer": "o", "bucket": "TAIL", "metric": "soft_rank",
                "ffn_dim": [1, 2, 4], "rank": [1.0, 2.0, 3.0],
            }
        )  # fmt: skip
    )
    out = add_deltas(table)
    delta = out[out["metric"] == DELTA_METRIC].iloc[0]
    assert not bool(delta["fitted"]) and math.isnan(delta["beta"])


def test_hand_computed_three_point_fit() -> None:
    # ln D = (0, 1, 2), ln r = (0, 1, 3): β = 3/2, intercept = −1/6, SS_res = 1/6, SS_tot = 42/9,
    # R² = 27/28, SE = √(SS_res/(n−2)/Sxx) = √(1/12), t(0.975, 1) = 12.706204736174694
    res = ols_loglog([1.0, math.e, math.e**2], [1.0, math.e, math.e**3])
    half = 12.706204736174694 * math.sqrt(1.0 / 12.0)
    assert res.fitted and res.n == 3
    # float64 rounding of the fit (_ols_tols; ≈ 1e-13) plus the closed forms' own (3 at |value|); a slip in any
    # formula (n vs n − 2, a wrong mean) moves these by ≳ 1e-2
    tol = _ols_tols([1.0, math.e, math.e**2], [1.0, math.e, math.e**3])
    assert res.beta == pytest.approx(1.5, abs=tol["beta"] + rounding_tol(F64, 1, 1.5))
    assert res.intercept == pytest.approx(-1.0 / 6.0, abs=tol["intercept"] + rounding_tol(F64, 1))
    assert res.r2 == pytest.approx(27.0 / 28.0, abs=tol["r2"] + rounding_tol(F64, 1))
    assert res.se == pytest.approx(math.sqrt(1.0 / 12.0), rel=tol["se_rel"] + rounding_tol(F64, 2))
    ci_tol = tol["beta"] + half * (tol["se_rel"] + tol["t_rel"]) + rounding_tol(F64, 3, magnitude=1.5 + half)
    assert res.ci_low == pytest.approx(1.5 - half, abs=ci_tol)
    assert res.ci_high == pytest.approx(1.5 + half, abs=ci_tol)


def test_perfect_power_law_is_recovered_exactly() -> None:
    widths = 768.0 * np.arange(1, 9)
    ranks = 3.0 * widths**0.73
    res = ols_loglog(widths, ranks)
    # float64 rounding of the fit on logs of size ≈ 9 (_ols_tols), plus the data's own (a power and a product: 3
    # roundings of each rank, i.e. 3 eps in each log, as a β error ≤ 3 eps·Σ|dx|/Sxx; covered by e_v's n + 2)
    tol = _ols_tols(widths, ranks)
    assert res.beta == pytest.approx(0.73, abs=tol["beta"])
    assert res.r2 == pytest.approx(1.0, abs=tol["r2"])
    assert res.intercept == pytest.approx(math.log(3.0), abs=tol["intercept"] + rounding_tol(F64, 1))
    # The residuals are rounding (≲ e_v ≈ 2e-14), so the interval's width 2·t·se is ~1e-13; 1e-10 is ≥ 100× that
    # and far below any real scatter's interval (≳ 1e-2).
    assert res.ci_high - res.ci_low < 1e-10


def test_fewer_than_three_distinct_widths_is_not_fitted() -> None:
    for widths, ranks in [([768, 1536], [10.0, 20.0]), ([768, 768, 1536, 1536], [10.0, 11.0, 20.0, 21.0])]:
        res = ols_loglog(widths, ranks)
        assert not res.fitted and math.isnan(res.beta) and math.isnan(res.ci_low) and "distinct widths" in res.reason
    # NaN ranks are dropped before counting widths
    assert not ols_loglog([1, 2, 3], [1.0, np.nan, 3.0]).fitted
    assert not ols_loglog([1, 2, 3], [1.0, 0.0, 3.0]).fitted  # log of a zero rank is undefined
    table = fit_points(
        pd.DataFrame(
            {
                "model": "m", "optimizer": ["a"] * 2 + ["b"] * 3, "bucket": "HEAD", "metric": "hard_rank",
                "ffn_dim": [64, 128, 64, 128, 256], "rank": [5.0, 9.0, 5.0, 9.0, 17.0],
            }
        )
    )  # fmt: skip
    a, b = table.iloc[0], table.iloc[1]
    assert a["optimizer"] == "a" and not bool(a["fitted"]) and math.isnan(a["beta"]) and a["n_widths"] == 2
    assert b["optimizer"] == "b" and bool(b["fitted"]) and b["n_widths"] == 3


def test_ols_matches_scipy_linregress_on_noisy_data() -> None:
    from scipy import stats

    rng = np.random.default_rng(1)
    widths = 512.0 * np.arange(1, 9)
    ranks = 2.0 * widths**0.6 * np.exp(rng.normal(0, 0.1, 8))
    ref = stats.linregress(np.log(widths), np.log(ranks))
    res = ols_loglog(widths, ranks)
    # two float64 implementations of the same formulas: each within _ols_tols of exact
    tol = _ols_tols(widths, ranks)
    assert res.beta == pytest.approx(ref.slope, abs=2 * tol["beta"])
    assert res.se == pytest.approx(ref.stderr, rel=2 * tol["se_rel"])
    assert res.r2 == pytest.approx(ref.rvalue**2, abs=2 * tol["r2"] + rounding_tol(F64, 2))


def _hand_checkpoint_table() -> pd.DataFrame:
    rows = []
    for layer in range(3):  # run A: value = step + 10·layer, steps 0..7 → last 5 steps 3..7, median 5 + 10·layer
        for step in range(8):
            rows.append(("A", layer, step * 200, step + 10.0 * layer))
    for step, value in [(0, 100.0), (200, 1.0), (400, 3.0)]:  # run B: one layer, only 3 checkpoints → median 3
        rows.append(("B", 0, step, value))
    df = pd.DataFrame(rows, columns=["run", "layer", "step", "value"])
    return df.sample(frac=1.0, random_state=0)  # row order must not matter, only the step values


def test_aggregation_medians_on_hand_table() -> None:
    agg = aggregate_checkpoints_and_layers(_hand_checkpoint_table())
    per_layer = agg.per_layer.set_index(["run", "layer"])
    assert per_layer.loc[("A", 0), "value"] == 5.0
    assert per_layer.loc[("A", 1), "value"] == 15.0
    assert per_layer.loc[("A", 2), "value"] == 25.0
    assert per_layer.loc[("A", 0), "n_steps"] == 5
    assert per_layer.loc[("B", 0), "value"] == 3.0 and per_layer.loc[("B", 0), "n_steps"] == 3
    per_run = agg.per_run.set_index("run")
    assert per_run.loc["A", "median"] == 15.0
    assert per_run.loc["A", "sd"] == pytest.approx(10.0, abs=1e-12)  # SD(5, 15, 25), ddof 1
    assert per_run.loc["A", "n_layers"] == 3
    assert math.isnan(per_run.loc["B", "sd"]) and per_run.loc["B", "n_layers"] == 1
    last_only = aggregate_checkpoints_and_layers(_hand_checkpoint_table(), last_k=1).per_run.set_index("run")
    assert last_only.loc["A", "median"] == 17.0  # step 7 values 7, 17, 27
    assert last_only.loc["B", "median"] == 3.0


def test_aggregation_with_several_group_columns() -> None:
    df = _hand_checkpoint_table().assign(bucket="TAIL")
    other = df.assign(bucket="HEAD", value=df["value"] * 2.0)
    agg = aggregate_checkpoints_and_layers(pd.concat([df, other]), group_cols=("run", "bucket"))
    per_run = agg.per_run.set_index(["run", "bucket"])
    assert per_run.loc[("A", "TAIL"), "median"] == 15.0
    assert per_run.loc[("A", "HEAD"), "median"] == 30.0
    with pytest.raises(ValueError, match="value"):
        aggregate_checkpoints_and_layers(df.drop(columns="value"))


def test_bootstrap_interval_contains_beta_for_clean_power_law() -> None:
    rng = np.random.default_rng(5)
    widths = 768.0 * np.arange(1, 9)
    layers = [4.0 * w**0.8 * np.exp(rng.normal(0.0, 0.05, 12)) for w in widths]  # 12 layers, 5% layer scatter
    boot = bootstrap_beta(widths, layers, n_boot=1000, seed=0)
    assert boot.ci_low < 0.8 < boot.ci_high
    assert boot.ci_low <= boot.beta <= boot.ci_high
    assert boot.ci_high - boot.ci_low < 0.1
    # the same medians through the same fit: equal up to a rounding or two; 1e-14 (≈ 45 eps) is ≥ 20× that
    assert boot.beta == pytest.approx(ols_loglog(widths, [np.median(v) for v in layers]).beta, rel=1e-14)
    again = bootstrap_beta(widths, layers, n_boot=1000, seed=0)
    assert (again.ci_low, again.ci_high) == (boot.ci_low, boot.ci_high)  # reproducible from the seed


def test_bootstrap_of_identical_layers_has_zero_width() -> None:
    widths = [100.0, 200.0, 400.0]
    layers = [np.full(6, 2.0 * w**0.5) for w in widths]
    boot = bootstrap_beta(widths, layers, n_boot=200, seed=1)
    # every resample has the same medians, so every β is the one fit's, within its float64 rounding
    tol = _ols_tols(widths, [2.0 * w**0.5 for w in widths])["beta"] + rounding_tol(F64, 2, 0.5)
    assert boot.ci_low == pytest.approx(0.5, abs=tol) and boot.ci_high == pytest.approx(0.5, abs=tol)


def test_seed_mean_interval_hand_computed() -> None:
    res = seed_mean_interval([0.9, 1.0, 1.1])
    half = 4.302652729749462 * 0.1 / math.sqrt(3.0)  # t(0.975, 2) · sd / √n, sd = 0.1
    assert res.computed and res.n == 3
    # mean: 3 terms and a division at ≤ 1.1
    assert res.mean == pytest.approx(1.0, abs=rounding_tol(F64, 4, magnitude=1.1))
    # sd: the deviations x − mean (≈ 0.1) lose |x|/0.1 = 11× relative to their size; squares, sum, division, sqrt
    sd_rel = rounding_tol(F64, 4 + 5, magnitude=11.0)
    assert res.sd == pytest.approx(0.1, rel=sd_rel)
    ci_tol = half * (sd_rel + rounding_tol(F64, 4 + 3)) + rounding_tol(F64, 1, magnitude=1.0 + half)
    assert res.ci_low == pytest.approx(1.0 - half, abs=ci_tol)
    assert res.ci_high == pytest.approx(1.0 + half, abs=ci_tol)
    single = seed_mean_interval([0.7])
    assert not single.computed and single.mean == 0.7 and math.isnan(single.ci_low)
    assert not seed_mean_interval([]).computed


def test_cli_prints_table_and_writes_csv(tmp_path, capsys) -> None:
    out = tmp_path / "fits" / "beta.csv"
    assert fit_points_cli(str(PAPER_RANK_POINTS), str(out)) == 0
    text = capsys.readouterr().out
    assert "adamw" in text and "Δ soft−hard" in text and "[0.127, 0.749]" in text  # AdamW TAIL hard interval
    written = pd.read_csv(out)
    assert len(written) == 60 and {"beta", "ci95_low", "ci95_high", "r2", "n_widths"} <= set(written.columns)


def test_cli_names_file_and_missing_column(tmp_path, capsys) -> None:
    bad = tmp_path / "no_rank.csv"
    pd.read_csv(PAPER_RANK_POINTS).drop(columns="rank").to_csv(bad, index=False)
    assert fit_points_cli(str(bad), None) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "rank" in err and "lacks required column" in err
    assert fit_points_cli(str(tmp_path / "absent.csv"), None) == 2
    assert "absent.csv" in capsys.readouterr().err
