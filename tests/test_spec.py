"""The study spec: preset ← params.yaml merge, and validation errors that name the file, the key and the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import listing, make_project
from specscale.study.spec import LauncherSpec, SpecError, load_study
from specscale.study.sweep import expand_sweep

# --- merge ---------------------------------------------------------------------------------------------------------


def test_preset_then_params_then_defaults(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: smoke\nmodel: {n_layers: 3}\ntrain: {steps: 7}\ndata: {}\n"
                                    "sweep: {widths: [5]}\nlauncher: {max_parallel: 3}\n")
    import yaml

    from specscale.study.spec import StudySpec

    smoke = yaml.safe_load((tmp_path / "specs" / "smoke.yaml").read_text())
    defaults = OmegaConf.structured(StudySpec)
    study = load_study(params)
    assert study.preset == "smoke"
    assert study.model.n_layers == 3  # params
    assert study.train.steps == 7  # params
    for section, key in (("model", "d_model"), ("model", "n_heads"), ("train", "batch_size"), ("train", "seq_len"),
                         ("data", "vocab_size"), ("data", "max_bytes")):
        assert smoke[section][key] != defaults[section][key]  # the preset sets it ...
        assert study[section][key] == smoke[section][key], (section, key)  # ... and params left it alone
    assert "rope_base" not in smoke["model"] and study.model.rope_base == 10000.0  # dataclass default
    assert list(study.sweep.widths) == [5]  # a list in params replaces the preset's list
    assert list(study.sweep.optimizers) == smoke["sweep"]["optimizers"]  # preset
    assert study.launcher.max_parallel == 3
    assert study.probe.alphas[-1] == float("inf")  # preset's `.inf` survives


def test_preset_argument_overrides_params_preset(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: smoke\n")
    import yaml

    tiny = yaml.safe_load((tmp_path / "specs" / "tiny.yaml").read_text())
    study = load_study(params, preset="tiny")
    assert study.preset == "tiny" and study.train.steps == tiny["train"]["steps"] != 40
    assert load_study(params).model.d_model == 32


def test_real_params_yaml_loads() -> None:
    from helpers import REPO

    study = load_study(REPO / "params.yaml")
    assert (REPO / "specs" / f"{study.preset}.yaml").exists()
    assert len(expand_sweep(study)) > 0


# --- validation errors ---------------------------------------------------------------------------------------------


def _error(tmp_path: Path, text: str) -> str:
    params = make_project(tmp_path, text)
    with pytest.raises(SpecError) as info:
        expand_sweep(load_study(params), params)
    message = str(info.value)
    assert str(params) in message, message  # names the file
    assert "\n" not in message, message  # one line
    return message


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nmodel: {n_head: 2}\n")
    assert "'model.n_head'" in msg and "did you mean 'n_heads'" in msg


def test_misspelt_section_suggests_the_right_one(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nmodle: {d_model: 8}\n")
    assert "'modle'" in msg and "did you mean 'model'" in msg


def test_misspelt_ablation_field_suggests_the_right_one(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nablations:\n  a: {varry: {model.n_heads: [1]}}\n")
    assert "'ablations.a.varry'" in msg and "did you mean 'vary'" in msg


def test_misspelt_vary_path(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nablations:\n  a: {vary: {model.n_head: [1]}}\n")
    assert "'ablations.a.vary.model.n_head'" in msg and "did you mean 'n_heads'" in msg


def test_string_where_a_number_belongs(tmp_path: Path) -> None:
    msg = _error(tmp_path, 'preset: smoke\ntrain: {steps: "many"}\n')
    assert "'train.steps'" in msg and "'many'" in msg


def test_float_where_an_integer_belongs(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\ntrain: {steps: 1.5}\n")
    assert "'train.steps'" in msg


def test_string_in_a_varied_number(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nablations:\n  a: {vary: {train.steps: [many]}}\n")
    assert "'ablations.a.vary.train.steps'" in msg and "'many'" in msg


TINY = "preset: tiny\nmodel: {d_model: 64, n_heads: 4}\n"


def test_heads_not_dividing_d_model(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: tiny\nmodel: {d_model: 64, n_heads: 5}\n")
    assert "'model.n_heads'" in msg and "5 heads" in msg and "d_model=64" in msg


def test_heads_not_dividing_d_model_in_an_ablation(tmp_path: Path) -> None:
    msg = _error(tmp_path, TINY + "ablations:\n  heads: {vary: {model.n_heads: [2, 5]}}\n")
    assert "'ablations.heads.vary.model.n_heads'" in msg and "5 heads" in msg and "d_model=64" in msg


def test_heads_checked_against_a_varied_d_model(tmp_path: Path) -> None:
    msg = _error(tmp_path, TINY + "ablations:\n  a: {vary: {model.d_model: [48], model.n_heads: [32]}}\n")
    assert "'ablations.a.vary.model.n_heads'" in msg and "d_model=48" in msg


def test_varied_d_model_checked_against_base_heads(tmp_path: Path) -> None:
    msg = _error(tmp_path, TINY + "ablations:\n  a: {vary: {model.d_model: [64, 66]}}\n")
    assert "'ablations.a.vary.model.d_model'" in msg and "4 heads do not divide d_model=66" in msg


def test_rope_needs_an_even_head_dim(tmp_path: Path) -> None:
    msg = _error(tmp_path / "a", "preset: tiny\nmodel: {d_model: 64, n_heads: 64}\n")  # divides 64, head_dim 1
    assert "'model.n_heads'" in msg and "even head dimension" in msg
    params = make_project(tmp_path / "b", "preset: tiny\nmodel: {d_model: 64, n_heads: 64, pos_encoding: nope}\n")
    assert load_study(params).model.n_heads == 64  # NoPE has no such constraint
    msg = _error(tmp_path / "c", TINY + "ablations:\n  a: {vary: {model.n_heads: [2, 64]}}\n")
    assert "'ablations.a.vary.model.n_heads'" in msg and "even head dimension" in msg


def test_unknown_optimizer_name(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nsweep: {optimizers: [adamw, adam]}\n")
    assert "'sweep.optimizers[1]'" in msg and "'adam'" in msg and "dion_<a>_<b>" in msg


def test_unknown_optimizer_name_in_an_ablation(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nablations:\n  a: {vary: {model.n_heads: [1]}, optimizers: [sgd]}\n")
    assert "'ablations.a.optimizers[0]'" in msg and "'sgd'" in msg


@pytest.mark.parametrize("widths", ["[1, 0]", "[0]", "[-2]"])
def test_width_must_be_positive(tmp_path: Path, widths: str) -> None:
    msg = _error(tmp_path, f"preset: smoke\nsweep: {{widths: {widths}}}\n")
    assert "'sweep.widths[" in msg and "positive integer" in msg


def test_zero_d_model(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nmodel: {d_model: 0}\n")
    assert "'model.d_model'" in msg and "> 0" in msg


def test_bad_choice(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nmodel: {pos_encoding: alibi}\n")
    assert "'model.pos_encoding'" in msg and "rope, nope" in msg


def test_missing_and_unknown_preset(tmp_path: Path) -> None:
    assert "'preset'" in _error(tmp_path / "a", "model: {}\n")
    msg = _error(tmp_path / "b", "preset: nosuch\n")
    assert "'preset'" in msg and "'nosuch'" in msg and "smoke" in msg and "tiny" in msg


def test_unknown_optim_hyperparameter_raised_by_expand_sweep(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: smoke\noptim: {muon: {lrr: 0.1}}\n")
    study = load_study(params)  # the spec itself is well-formed; the hyperparameter check needs the optimizer
    with pytest.raises(SpecError) as info:
        expand_sweep(study, params)
    msg = str(info.value)
    assert str(params) in msg and "'optim.muon.lrr'" in msg and "did you mean 'lr'" in msg


def test_unknown_hyperparameter_in_an_ablation_names_the_arm(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nablations:\n  a: {vary: {model.n_heads: [1]}, optim: {adamw: {lrr: 1}}}\n")
    assert "'ablations.a.optim.adamw.lrr'" in msg and "did you mean 'lr'" in msg


def test_unknown_optimizer_key_in_optim_sections(tmp_path: Path) -> None:
    assert "'optim.muonn'" in _error(tmp_path / "a", "preset: smoke\noptim: {muonn: {lr: 1}}\n")
    msg = _error(tmp_path / "b",
                 "preset: smoke\nablations:\n  a: {vary: {model.n_heads: [1]}, optim: {muonn: {lr: 1}}}\n")
    assert "'ablations.a.optim.muonn'" in msg


def test_dion_family_overrides_apply_to_every_dion(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: smoke\nsweep: {optimizers: [dion_1_2, dion_1_4], widths: [1]}\n"
                                    "optim: {dion: {momentum: 0.9}, dion_1_4: {momentum: 0.8}}\n"
                                    "fit: {reference_optimizer: dion_1_2,\n"
                                    "      primary: {comparison: dion_1_4 - dion_1_2}}\n")
    runs = {r.optimizer: r.spec["optim"]["hparams"] for r in expand_sweep(load_study(params), params)}
    assert runs["dion_1_2"]["momentum"] == 0.9 and runs["dion_1_2"]["rank_fraction"] == 0.5
    assert runs["dion_1_4"]["momentum"] == 0.8 and runs["dion_1_4"]["rank_fraction"] == 0.25  # name beats family


def test_rank_fraction_override_is_rejected(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nsweep: {optimizers: [dion_1_2]}\noptim: {dion: {rank_fraction: 0.25}}\n")
    assert "'optim.dion.rank_fraction'" in msg


def test_launcher_spec_is_structured() -> None:
    launcher = OmegaConf.structured(LauncherSpec)
    with pytest.raises(Exception):
        launcher.max_parallell = 2  # noqa: B018 - structured configs reject unknown keys


# --- the CLI -------------------------------------------------------------------------------------------------------


def _cli(cwd: Path, *args: str, entry: str | None = None) -> subprocess.CompletedProcess:
    cmd = [entry] if entry else [sys.executable, "-m", "stages.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "SPECSCALE_ROOT": str(cwd)})


def test_cli_validate_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    params = make_project(tmp_path, "preset: smoke\nmodel: {n_head: 2}\n")
    before = listing(tmp_path)
    out = _cli(tmp_path, "--params", str(params), "validate")
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("specscale: error: ") and str(params) in lines[0]
    assert "'model.n_head'" in lines[0] and "did you mean 'n_heads'" in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert listing(tmp_path) == before


def test_cli_validate_hyperparameter_error_via_entry_point(tmp_path: Path) -> None:
    make_project(tmp_path, "preset: smoke\noptim: {muon: {lrr: 0.1}}\n")
    before = listing(tmp_path)
    entry = shutil.which("specscale")
    out = _cli(tmp_path, "validate", entry=entry) if entry else _cli(tmp_path, "validate")
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'optim.muon.lrr'" in lines[0] and "params.yaml" in lines[0], out.stderr
    assert listing(tmp_path) == before


def test_cli_validate_ok(tmp_path: Path) -> None:
    make_project(tmp_path, "preset: smoke\nmodel: {d_model: 32, n_heads: 2}\n"
                           "sweep: {optimizers: [adamw, muon], widths: [1, 2, 3], seeds: [0]}\n")
    before = listing(tmp_path)
    out = _cli(tmp_path, "validate")
    assert out.returncode == 0, out
    assert out.stdout.strip() == "ok: preset smoke, 6 training runs"  # 2 optimizers × 3 widths × 1 seed
    assert listing(tmp_path) == before


def test_cli_status_and_plan_why_on_a_fresh_project(tmp_path: Path) -> None:
    make_project(tmp_path, "preset: smoke\nsweep: {optimizers: [adamw], widths: [1, 2], seeds: [0]}\n"
                           "cache: {on_code_change: recompute}\n")
    before = listing(tmp_path)
    out = _cli(tmp_path, "status", "--why")
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    assert "train: 2 missing" in lines and "why (cache.on_code_change: recompute):" in lines
    i = lines.index("[train] 2 to compute")
    assert lines[i + 1].startswith("  adamw k=1 seed=0 (key ")
    assert lines[i + 2] == "    never computed: no finished train run"
    out = _cli(tmp_path, "plan", "--why")
    assert out.returncode == 0, out
    assert "  train        0/2 cached" in out.stdout and "[spectra] 2 to compute" in out.stdout
    assert listing(tmp_path) == before  # looking writes nothing


def test_cli_status_names_a_dvc_file_torn_by_a_kill(tmp_path: Path) -> None:
    make_project(tmp_path, "preset: smoke\nsweep: {optimizers: [adamw], widths: [1], seeds: [0]}\n")
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / ".dvc" / "tmp" / "rwlock").write_text('{"read": {')  # cut short mid-write
    out = _cli(tmp_path, "status")
    assert out.returncode == 0, out
    [line] = [x for x in out.stdout.splitlines() if x.startswith("DVC cannot read")]
    assert line.startswith("DVC cannot read .dvc/tmp/rwlock: not a valid DVC rwlock file (JSONDecodeError")
    assert line.endswith("run `specscale recover`, then `dvc repro`")


def test_a_bad_precision_name_is_caught_before_any_run(tmp_path: Path) -> None:
    msg = _error(tmp_path, "preset: smoke\nsweep: {optimizers: [muon]}\noptim: {muon: {ns_dtype: bf16}}\n")
    assert "'optim.muon.ns_dtype'" in msg and "'bf16' is not a dtype name" in msg and "bfloat16" in msg


def test_an_empty_ablations_section_keeps_the_presets_arms(tmp_path: Path) -> None:
    """`ablations:` (null) keeps the preset's arms, `ablations: {}` drops them; DVC needs the key present either way."""
    kept = load_study(make_project(tmp_path / "a", "preset: gpt2-160m\nablations:\nsweep:\n"))
    preset = load_study(make_project(tmp_path / "b", "preset: gpt2-160m\n"))
    assert set(kept.ablations) == set(preset.ablations) != set()
    assert list(kept.sweep.widths) == list(preset.sweep.widths)  # an empty section keeps the preset's values
    dropped = load_study(make_project(tmp_path / "c", "preset: gpt2-160m\nablations: {}\n"))
    assert dict(dropped.ablations) == {}
