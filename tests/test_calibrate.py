"""`specscale calibrate`: every per-run stage measured in a temporary project, the study extrapolated; a missing shard
and a failing stage reported in one clear line each; the user's project untouched."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from specscale.store.runs import RunStore
from specscale.tools.calibrate import STAGES, Measured, _fan_out_seconds, calibration_study, write_synthetic_shards
from specscale.tokens.shards import GPT2_VOCAB, open_tokens
from specscale.study.spec import load_study
from specscale.tools.status import run_costs
from specscale.model.build import kept_checkpoints
from stages.cli import main
from stages.runner import plan_study

REPO = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path, preset: str, extra: str = "") -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(f"preset: {REPO / 'specs' / preset}.yaml\n{extra}")
    return params


def _row(out: str, stage: str) -> str:
    rows = [ln for ln in out.splitlines() if ln.startswith(f"{stage} ")]
    assert len(rows) == 1, out
    return rows[0]


def test_smoke_calibration_prints_every_stage_and_the_extrapolation(tmp_path, capsys):
    params = _project(tmp_path, "smoke", "sweep: {optimizers: [adamw, muon], widths: [1, 3], seeds: [0]}\n")
    assert main(["--params", str(params), "calibrate", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured run: adamw k=3 seed=0, 2 layers (preset 2), micro-batch 8 × seq 64, 2 steps" in out
    for stage in STAGES:  # time, peak RSS, peak GPU (n/a on CPU), ok
        assert re.search(r"^\S+ +[\d.]+ (s|min) +[\d.]+ [kMG]?B +(n/a|[\d.]+ [kMG]?B) +ok", _row(out, stage)), out
    assert re.search(r"ok: [\d.]+ s/step, [\d,]+ tok/s, [\d,.]+ GFLOP/s, MFU n/a \(CPU\)", _row(out, "train")), out
    assert "whole study (4 training runs), extrapolated to one device like this one:" in out
    assert re.search(r"^  total +[\d.]+ (s|min|h) = [\d.,]+ device-hours", out, re.M), out
    assert "plan's estimate (train only):" in out
    assert "Σ_runs FLOPs(run) / measured training FLOP/s" in out
    # the spectra run timed its phases (provenance.json) and each was extrapolated by its own law
    phases = re.search(r"^  spectra .*\((.*)\)$", out, re.M)
    assert phases and [p.split()[0] for p in phases[1].split(", ")] == [
        "covariance", "eigh", "forward", "load", "write", "rest"], out
    assert not (tmp_path / "runs").exists()  # measured in a temporary project, never the user's


def test_missing_shard_names_the_file_and_the_fix(tmp_path, capsys):
    params = _project(tmp_path, "gpt2-160m")
    assert main(["--params", str(params), "calibrate"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/data/fineweb10B/fineweb_train_*.bin" in err
    assert "--synthetic-data" in err
    assert not (tmp_path / "runs").exists()


def test_a_failing_stage_is_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    params = _project(tmp_path, "smoke", "sweep: {optimizers: [adamw], widths: [1], seeds: [0]}\n")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    # the real launcher path (in-process run, error.log), with training failing as it would at scale
    monkeypatch.setattr("stages.train.train_run", out_of_memory)
    assert main(["--params", str(params), "calibrate", "--steps", "1"]) == 1
    out = capsys.readouterr()
    assert _row(out.out, "train").endswith("FAILED: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "Traceback" not in out.out + out.err
    assert not [ln for ln in out.out.splitlines() if ln.startswith(("activations ", "spectra ", "whole study"))]
    kept = re.search(r"temporary project kept: (\S+)\)$", out.out, re.M)
    assert kept and (Path(kept[1]) / "calibrate.log").is_file()  # kept for its log
    shutil.rmtree(kept[1])


def test_calibration_study_reduces_the_sweep_and_keeps_the_shapes(tmp_path):
    study = load_study(_project(tmp_path, "gpt2-160m"))
    cfg = calibration_study(study, steps=3, width=None, layers=None, micro_batch=None, probe_tokens=1024)
    assert (list(cfg.sweep.optimizers), list(cfg.sweep.widths), dict(cfg.ablations)) == (["adamw"], [8], {})
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.train.seq_len) == (12, 768, 512)
    assert (cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.steps, cfg.train.log_every) == (64, 64, 3, 3)
    # the probe is the step's training batch (probe.source train_batch): rank 0's share fits the reduced batch
    assert (cfg.probe.source, cfg.probe.rank_share_tokens, cfg.launcher.cluster) == ("train_batch", 64 * 512, "debug")
    small = calibration_study(load_study(_project(tmp_path, "smoke")), 2, 2, 1, 4, 1024)  # heldout probe set
    assert (small.sweep.widths[0], small.model.n_layers, small.train.batch_size) == (2, 1, 4)
    assert (small.probe.tokens_per_bucket, small.probe.pooled_tokens) == (1024, 2048)
    assert study.train.steps == 6000  # the user's study is not modified


def test_spectra_phases_scale_by_their_own_laws(tmp_path):
    """The measured run is k=4 (D = 4·32 = 128); the study adds k=1 (D = 32) and k=2, same layers and checkpoints.
    Per slice, eigh scales as D³, covariance as N·D², write as N·D; the rest of the stage's time is per run."""
    params = _project(tmp_path, "smoke", "sweep: {optimizers: [adamw], widths: [1, 2, 4], seeds: [0]}\n")
    study = load_study(params)
    full = plan_study(study, params)
    small = plan_study(calibration_study(study, 2, None, None, None, None), params)  # same probe N: N ratio 1
    store = RunStore(tmp_path)
    run_dir = store.final_dir("spectra", small.spectra[0].key)
    run_dir.mkdir(parents=True)
    phases = {"eigh": 8.0, "covariance": 4.0, "write": 2.0}
    (run_dir / "provenance.json").write_text(json.dumps({"phase_seconds": phases}))
    measured = {"spectra": Measured("spectra", 20.0, 0, None, True)}  # 14 s of phases + 6 s of the rest
    _, by_phase = _fan_out_seconds(full, small, store, measured, [run_costs(full, r) for r in full.train])
    t = full.train[0].spec["train"]
    ckpts = len(kept_checkpoints(t["steps"], t["log_every"], t["keep_checkpoints"], t["keep_all_checkpoints"]))
    scale = ckpts / 2  # the measured run kept checkpoints 0 and 2; layers are the same
    d = [0.25, 0.5, 1.0]
    assert by_phase["eigh"] == pytest.approx(8.0 * scale * sum(x ** 3 for x in d), rel=1e-12)
    assert by_phase["covariance"] == pytest.approx(4.0 * scale * sum(x ** 2 for x in d), rel=1e-12)
    assert by_phase["write"] == pytest.approx(2.0 * scale * sum(d), rel=1e-12)
    assert by_phase["rest"] == pytest.approx(6.0 * 3, rel=1e-12)
    # forward: a slice of layer l runs blocks 0…l, so a run's mean slice is (L + 1)/2 blocks, no head; same L and
    # probe tokens here, so the law is the ratio of one block's forward FLOPs per token at D = k·d
    (run_dir / "provenance.json").write_text(json.dumps({"phase_seconds": {**phases, "forward": 3.0}}))
    measured_fwd = {"spectra": Measured("spectra", 23.0, 0, None, True)}
    _, with_fwd = _fan_out_seconds(full, small, store, measured_fwd, [run_costs(full, r) for r in full.train])
    dm, seq = study.model.d_model, study.train.seq_len
    block = lambda k: 2 * (4 * dm * dm + 2 * dm * k * dm) + 4 * seq * dm  # noqa: E731
    assert with_fwd["forward"] == pytest.approx(3.0 * scale * sum(block(k) / block(4) for k in (1, 2, 4)), rel=1e-12)
    assert with_fwd["rest"] == pytest.approx(6.0 * 3, rel=1e-12)
    # priced onto its own shape (a study of k = 4 alone), every law is 1, load and forward included
    (run_dir / "provenance.json").write_text(json.dumps({"phase_seconds": {**phases, "load": 1.0, "forward": 3.0}}))
    (tmp_path / "k4").mkdir()
    params_k4 = _project(tmp_path / "k4", "smoke", "sweep: {optimizers: [adamw], widths: [4], seeds: [0]}\n")
    only = plan_study(load_study(params_k4), params_k4)
    _, same = _fan_out_seconds(only, small, store, measured, [run_costs(only, r) for r in only.train])
    assert same == pytest.approx({"eigh": 8.0 * scale, "covariance": 4.0 * scale, "write": 2.0 * scale,
                                  "load": 1.0 * scale, "forward": 3.0 * scale, "rest": 20.0 - 18.0}, rel=1e-12)


def test_synthetic_shards_are_gpt2_vocabulary_bin_shards(tmp_path):
    patterns = write_synthetic_shards(tmp_path, 3000, 1000)
    assert patterns == {"paths": [str(tmp_path / "train_*.bin")], "val_paths": [str(tmp_path / "val_*.bin")]}
    train = np.asarray(open_tokens(tmp_path / "train_000000.bin"))
    assert train.shape == (3000,) and 0 <= train.min() and train.max() < GPT2_VOCAB
    assert np.asarray(open_tokens(tmp_path / "val_000000.bin")).shape == (1000,)


@pytest.mark.slow
@pytest.mark.parametrize("preset, width, layers", [("gpt2-160m", 8, 12), ("gpt2-350m", 4, 24)])
def test_gpt2_presets_calibrate_on_cpu_in_minutes(tmp_path, capsys, preset, width, layers):
    """The ≤ 15-minute check: the paper's preset at its largest k, real d_model, vocabulary, sequence length, probe
    D; one layer and one sequence per step on CPU (2-3 min each on 2 cores)."""
    params = _project(tmp_path, preset)
    argv = ["--params", str(params), "calibrate", "--synthetic-data", "--layers", "1", "--micro-batch", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    print(out)  # the table is the point of the check: CI's log keeps it
    assert (f"measured run: adamw k={width} seed=0, 1 layers (preset {layers}), micro-batch 1 × seq 512, 3 steps"
            in out)
    for stage in STAGES:
        assert " ok" in _row(out, stage), out
    assert "whole study (" in out and "plan's estimate (train only):" in out
