"""Every key a user can misspell or give a bad value is rejected before anything is written, with the file and the
key named: `specscale validate` (what dvc.yaml's validate stage runs) across every section of params.yaml, each
run's optimizer settings through the optimizers' own checks, and a real `dvc repro` stopped by a misspelt section
that no stage lists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from helpers import listing, make_project, make_smoke_project, run, smoke_params
from specscale.study.spec import SpecError, StudySpec
from stages.cli import main
from stages.validate import check_study

RECORD = "runs/validated.json"  # the validate stage's output in dvc.yaml

# (section, params.yaml text on top of the smoke preset, the key the message must name). Every section of the spec,
# the launcher and cache included, and a misspelt section: a misspelt key (answered with "did you mean") and a bad
# value each.
MISSPELT = [
    ("top level", "trian: {steps: 10}\n", "trian", "train"),
    ("data", "data: {max_byte: 1000}\n", "data.max_byte", "max_bytes"),
    ("model", "model: {n_head: 2}\n", "model.n_head", "n_heads"),
    ("train", "train: {resume_evry: 5}\n", "train.resume_evry", "resume_every"),
    ("probe", "probe: {dtyp: float16}\n", "probe.dtyp", "dtype"),
    ("fit", "fit: {last_kk: 2}\n", "fit.last_kk", "last_k"),
    ("optim", "optim: {adamw: {lrr: 0.1}}\n", "optim.adamw.lrr", "lr"),
    ("sweep", "sweep: {seed: [0]}\n", "sweep.seed", "seeds"),
    ("ablations", "ablations: {a: {varry: {model.n_heads: [1]}}}\n", "ablations.a.varry", "vary"),
    ("launcher", "launcher: {max_paralel: 2}\n", "launcher.max_paralel", "max_parallel"),
    ("cache", "cache: {on_code_chnage: recompute}\n", "cache.on_code_chnage", "on_code_change"),
]
BAD_VALUE = [
    ("data", "data: {max_bytes: 0}\n", "data.max_bytes"),
    ("data", "data: {source: files, paths: [corpus/*.txt]}\n", "data.paths[0]"),  # matches no file
    ("model", "model: {rope_base: -1.0}\n", "model.rope_base"),
    ("train", "train: {resume_every: 0}\n", "train.resume_every"),
    ("train", 'train: {steps: "many"}\n', "train.steps"),  # a string where a number belongs
    ("probe", "probe: {batch_size: 0}\n", "probe.batch_size"),
    ("fit", "fit: {reference_optimizer: normuon}\n", "fit.reference_optimizer"),  # smoke trains adamw and muon
    ("optim", "optim: {muon: {lr: -0.01}}\n", "optim.muon.lr"),
    ("optim", "optim: {adamw: {lr: 1e-3}}\n", "optim.adamw.lr"),  # YAML reads 1e-3 as text
    ("sweep", "sweep: {seeds: [0, 0]}\n", "sweep.seeds"),
    ("sweep", "sweep: {seeds: [-1]}\n", "sweep.seeds[0]"),
    ("sweep", "sweep: {widths: [1, 2, 1]}\n", "sweep.widths"),
    ("ablations", "ablations: {a: {vary: {train.steps: [0]}}}\n", "ablations.a.vary.train.steps"),
    ("launcher", "launcher: {max_parallel: 0}\n", "launcher.max_parallel"),
    ("launcher", "launcher: {inline_stages: [spectr]}\n", "launcher.inline_stages[0]"),
    ("cache", "cache: {on_code_change: sometimes}\n", "cache.on_code_change"),
]


def _validate(root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`specscale validate --record ...` as the validate stage runs it, in this process (no interpreter start)."""
    monkeypatch.setenv("SPECSCALE_ROOT", str(root))
    code = main(["--params", str(root / "params.yaml"), "validate", "--record", RECORD])
    out = capsys.readouterr()
    return code, out.out, out.err


def _rejected(tmp_path: Path, text: str, capsys, monkeypatch) -> str:
    params = make_project(tmp_path, "preset: smoke\n" + text)
    before = listing(tmp_path)
    code, out, err = _validate(tmp_path, capsys, monkeypatch)
    assert code == 2 and out == "", (code, out, err)
    [line] = err.strip().splitlines()
    assert line.startswith(f"specscale: error: {params}"), line  # the file
    assert listing(tmp_path) == before and not (tmp_path / "runs").exists()  # nothing written
    return line


@pytest.mark.parametrize(("section", "text", "key", "fix"), MISSPELT, ids=[c[0] for c in MISSPELT])
def test_a_misspelt_key_is_rejected_with_file_key_and_fix(tmp_path: Path, capsys, monkeypatch, section: str,
                                                          text: str, key: str, fix: str) -> None:
    line = _rejected(tmp_path, text, capsys, monkeypatch)
    assert f"'{key}'" in line and f"did you mean '{fix}'? valid: " in line, line


@pytest.mark.parametrize(("section", "text", "key"), BAD_VALUE, ids=[f"{c[0]}:{c[2]}" for c in BAD_VALUE])
def test_a_bad_value_is_rejected_with_file_and_key(tmp_path: Path, capsys, monkeypatch, section: str, text: str,
                                                   key: str) -> None:
    line = _rejected(tmp_path, text, capsys, monkeypatch)
    assert f"key '{key}'" in line, line


def test_every_section_is_covered() -> None:
    sections = {f.name for f in dataclasses.fields(StudySpec)} - {"preset"}
    assert {c[0] for c in MISSPELT} == sections | {"top level"} and {c[0] for c in BAD_VALUE} == sections


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path, capsys, monkeypatch) -> None:
    line = _rejected(tmp_path, "sweep: {seeds: [0]}\ntrain: {steps: 10\n", capsys, monkeypatch)
    assert re.search(r"params\.yaml, line 4, column 1: not valid YAML: .*flow mapping on line 3", line), line


def test_a_valid_study_writes_only_its_record(tmp_path: Path, capsys, monkeypatch) -> None:
    make_project(tmp_path, "preset: smoke\n")
    code, out, err = _validate(tmp_path, capsys, monkeypatch)
    assert code == 0 and out == "ok: preset smoke, 6 training runs\n", (out, err)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["validated.json"]
    assert (tmp_path / RECORD).read_text() == '{\n  "params": "params.yaml",\n  "preset": "smoke"\n}\n'


# --- optimizer settings through the optimizers' own checks, named by the key that set them --------------------------


@pytest.mark.parametrize(("text", "key", "says"), [
    ("optim: {muon: {momentum: 1.0}}", "optim.muon.momentum", "momentum must be in [0, 1)"),
    ("optim: {muon: {lion_betas: [0.9, 1.5]}}", "optim.muon.lion_betas", "betas must be two numbers in [0, 1)"),
    ("optim: {muon: {ns_coeffs: bogus}}", "optim.muon.ns_coeffs", "unknown Newton-Schulz coefficients 'bogus'"),
    ("optim: {adamw: {head_lr: -0.1}}", "optim.adamw.head_lr", "AdamW head group"),  # torch checks no group's lr
    ("sweep: {optimizers: [adamw, muon, dion_1_2]}\noptim: {dion: {weight_decay: -1.0}}", "optim.dion.weight_decay",
     "weight_decay must be >= 0"),
    ("ablations: {a: {vary: {model.n_heads: [1]}, optimizers: [adamw], optim: {adamw: {eps: -1.0}}}}",
     "ablations.a.optim.adamw.eps", "Invalid epsilon value"),
])
def test_optimizer_settings_fail_at_plan_time_naming_the_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    params = make_project(tmp_path, "preset: smoke\n" + text + "\n")
    with pytest.raises(SpecError) as info:
        check_study(params, tmp_path)
    assert f"key '{key}'" in str(info.value), str(info.value)
    assert says in str(info.value) and str(params) in str(info.value)


@pytest.mark.parametrize("preset", ["smoke", "tiny", "tiny-long"])
def test_the_shipped_studies_pass(tmp_path: Path, preset: str) -> None:
    study, points = check_study(make_project(tmp_path, f"preset: {preset}\n"), tmp_path)
    assert study.preset == preset and points


def test_the_gpt2_presets_pass_every_check_but_their_missing_shards(tmp_path: Path) -> None:
    """The shards live outside the repository (README: FineWeb-10B): everything before the data check passes."""
    for preset in ("gpt2-160m", "gpt2-350m"):
        params = make_project(tmp_path / preset, f"preset: {preset}\n")
        with pytest.raises(SpecError, match=r"key 'data\.paths\[0\]': no file matches 'data/fineweb10B/"):
            check_study(params, tmp_path / preset)


# --- a real `dvc repro` ---------------------------------------------------------------------------------------------


def test_dvc_repro_stops_at_a_misspelt_section_no_stage_lists(tmp_path: Path) -> None:
    """`trian:` is in no stage's params: before the validate stage, DVC said "up to date" and exited 0. Now the
    validate stage, which depends on the whole file, fails, and tokenize never runs."""
    project = make_smoke_project(tmp_path / "p", smoke_params(widths=[1]))
    run(["dvc", "repro", "validate"], project)
    assert "Data and pipelines are up to date" in run(["dvc", "repro", "validate"], project).stdout
    with open(project / "params.yaml", "a") as fh:
        fh.write("trian: {steps: 10}\n")
    out = run(["dvc", "repro"], project, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-2000:]
    assert "params.yaml: unknown key 'trian'; did you mean 'train'?" in text, text[-2000:]
    assert "Running stage 'tokenize'" not in text and not (project / "runs/tokenize").exists()
