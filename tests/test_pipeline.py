"""End to end: `dvc repro` on the smoke preset in a fresh project, then the cache behaviour a user relies on."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import finished as _finished
from helpers import make_smoke_project, run as _run, write_params as _write_params

PARAMS = {
    "preset": "smoke",
    "data": {}, "model": {}, "train": {}, "probe": {"keep_activations": "post-last"}, "fit": {}, "optim": {},
    "sweep": {"optimizers": ["adamw", "muon"], "widths": [1, 2, 3], "seeds": [0]},
    "ablations": {"blowup": {"vary": {"train.steps": [40]}, "optimizers": ["adamw"], "widths": [1],
                             "optim": {"adamw": {"lr": 300.0, "head_lr": 300.0}}}},
    "launcher": {"cluster": "debug", "max_parallel": 1},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_smoke_project(tmp_path_factory.mktemp("smoke"), PARAMS)
    first = _run(["dvc", "repro"], root, check=False)
    (root / "first_repro.log").write_text(first.stdout + first.stderr)
    return root


def test_first_repro_runs_every_stage_and_records_divergence(project: Path) -> None:
    log = (project / "first_repro.log").read_text()
    assert "[train] 7 runs: 0 cached, 7 to compute" in log, log[-3000:]
    # the console is for people: zarr's warning about unspecified v3 dtypes (fixed-width strings) must not appear
    assert "UnstableSpecificationWarning" not in log, log[-3000:]
    assert len(_finished(project, "train")) == 7
    results = [json.loads((project / "runs/train" / k / "result.json").read_text()) for k in _finished(project, "train")]
    diverged = [r for r in results if r["diverged"]]
    assert len(diverged) == 1, "the lr=300 run must be recorded as diverged, not crash"
    # diverged runs are results, not measured: 6 activations/spectra runs
    assert len(_finished(project, "spectra")) == 6
    for key in _finished(project, "train"):
        run = project / "runs/train" / key
        prov = json.loads((run / "provenance.json").read_text())
        assert prov["git_commit"] and "torch" in prov["packages"]
        assert not (run / "resume.pt").exists(), "resume state is scratch, never published"
    betas = json.loads((project / "results/betas.json").read_text())
    assert set(betas) == {"adamw", "muon"}
    assert set(betas["adamw"]) == {"trained", "step0"}
    assert {"HEAD", "MID", "TAIL", "GLOBAL"} <= set(betas["adamw"]["trained"])
    ppl = json.loads((project / "results/perplexity.json").read_text())
    assert sum(v["diverged"] for v in ppl.values()) == 1


def test_fit_writes_claims_and_the_readings_state_only_them(project: Path) -> None:
    """results/claims.csv after the first repro: the primary endpoint first (one seed a side: not tested), and every
    number the report's difference readings print is in it (tests/test_claims.py; with seeds: test_claims_smoke)."""
    import pandas as pd
    from test_claims import check_readings_against_claims

    claims = pd.read_csv(project / "results/claims.csv")
    first = claims.iloc[0]
    assert (first["family"], first["claim"], first["verdict"]) == (
        "primary", "muon − adamw: TAIL β_hard post, trained", "not tested")
    assert (claims["verdict"] == "not tested").all() and claims["lo"].isna().all()
    check_readings_against_claims(project / "results")


def test_zarr_and_xarray_outputs_carry_labels(project: Path) -> None:
    import xarray as xr

    key = sorted(_finished(project, "spectra"))[0]
    ds = xr.open_zarr(project / "runs/spectra" / key / "spectra.zarr", consolidated=False)
    assert set(ds["eigenvalues"].dims) == {"step", "layer", "site", "bucket", "mode"}
    assert set(ds["bucket"].values) >= {"HEAD", "GLOBAL"}
    eig = ds["eigenvalues"].sel(site="post", bucket="GLOBAL").isel(step=-1, layer=0).values
    assert (eig[:-1] >= eig[1:]).all() and eig.min() >= 1e-12


def test_second_repro_computes_nothing_then_one_new_width(project: Path) -> None:
    again = _run(["dvc", "repro"], project)
    assert "Data and pipelines are up to date" in again.stdout
    params = json.loads(json.dumps(PARAMS))
    params["launcher"]["max_parallel"] = 3  # the launcher never invalidates a run: the edit is checked, nothing reruns
    _write_params(project, params)
    assert re.findall(r"Running stage '(\w+)'", _run(["dvc", "repro"], project).stdout) == ["validate"]
    # one new sweep point: AdamW at width 4
    params["ablations"] = {**PARAMS["ablations"], "extra": {"optimizers": ["adamw"], "widths": [4]}}
    _write_params(project, params)
    out = _run(["dvc", "repro"], project).stdout
    assert "[train] 8 runs: 7 cached, 1 to compute" in out
    assert "[spectra] 7 runs: 6 cached, 1 to compute" in out


def test_deleting_one_spectra_run_recomputes_it_alone(project: Path) -> None:
    victim = sorted(_finished(project, "spectra"))[0]
    shutil.rmtree(project / "runs/spectra" / victim)
    out = _run(["dvc", "repro"], project).stdout
    assert "[spectra] 7 runs: 6 cached, 1 to compute" in out
    assert "[train]" not in out or "0 to compute" in out
    assert victim in _finished(project, "spectra")


def test_kept_activations_open_with_zarr_and_xarray(project: Path) -> None:
    import xarray as xr
    import zarr

    key = sorted(_finished(project, "activations"))[0]
    run = project / "runs/activations" / key
    manifest = json.loads((run / "manifest.json").read_text())
    last = max(manifest["steps"])
    group = zarr.open_group(str(run / "acts.zarr"), mode="r")
    arr = group[f"step_{last:06d}/L00/post/TAIL"]
    assert arr.shape == (manifest["sets"]["TAIL"], manifest["D"])
    assert dict(arr.attrs) | {} == {"step": last, "layer": 0, "site": "post", "bucket": "TAIL",
                                     "N": manifest["sets"]["TAIL"], "D": manifest["D"]}
    assert f"step_{last:06d}/L00/pre/TAIL" not in group  # post-last keeps the post site of the last step only
    ds = xr.open_zarr(run / "acts.zarr", group=f"step_{last:06d}/L01/post", consolidated=False)
    assert ds["GLOBAL"].shape == (manifest["sets"]["GLOBAL"], manifest["D"])


def test_corrupt_activation_chunk_is_detected_and_regenerated(project: Path) -> None:
    """A damaged chunk in a scratch slice must never be read as data: spectra regenerates it and gets the same result.
    (A complete slice left in scratch, e.g. by an interrupted job, is reused, so a corrupt one is read and caught.)"""
    import glob

    import numpy as np
    import xarray as xr

    from specscale.store.runs import RunStore
    from specscale.measure.activations import ensure_slice
    from specscale.model.build import resolve_device

    key = sorted(_finished(project, "spectra"))[-1]
    spectra_dir = project / "runs/spectra" / key
    before_ds = xr.open_zarr(spectra_dir / "spectra.zarr", consolidated=False)
    before = before_ds["eigenvalues"].values
    spec = json.loads((spectra_dir / "spec.json").read_text())
    store = RunStore(project)
    scratch = ensure_slice(spec, store, resolve_device("cpu"), int(before_ds["step"].values[0]), 0)
    chunks = sorted(glob.glob(str(scratch / "acts.zarr" / "step_*" / "L00" / "post" / "GLOBAL" / "c" / "**" / "*"),
                          recursive=True))
    chunk = Path([c for c in chunks if Path(c).is_file()][0])
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of the compressed chunk
    chunk.write_bytes(bytes(data))
    shutil.rmtree(spectra_dir)
    out = _run(["dvc", "repro"], project).stdout
    assert "unreadable" in out and "regenerating" in out, out[-3000:]
    after = xr.open_zarr(spectra_dir / "spectra.zarr", consolidated=False)["eigenvalues"].values
    np.testing.assert_allclose(after, before, rtol=1e-10, equal_nan=True)
