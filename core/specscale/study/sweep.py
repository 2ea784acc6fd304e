"""Expand the study spec into fully resolved run specs, one per (arm, varied values, optimizer, width, seed).

A run spec holds only what changes a trained model: data, model, train (minus speed-only fields), optimizer name with
every hyperparameter explicit, and seed. Arms that resolve to the same spec share one run (same key), so an ablation
that repeats the base values reuses the main sweep's runs. Labels (arm, varied values) ride alongside, never hashed.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from specscale.hints.spelling import did_you_mean
from specscale.store.runs import stable_hash
from specscale.study.spec import DataSpec, SpecError, TrainSpec, to_container

# Train fields that change speed or bookkeeping only: excluded from every key.
SPEED_ONLY_TRAIN_FIELDS = ("resume_every", "threads")

# Fields added to a hashed section after run keys were in use, with the default that keeps the old behaviour. Such a
# field enters a hashed spec (every run's, and tokenize's in plan.py) only when set to another value, so adding it
# changed no existing key: a study that leaves it alone keeps every finished run. Readers of a run spec use
# `.get(leaf, default)`. tests/test_corpus_english.py pins the tiny preset's keys.
KEY_NEUTRAL_FIELDS: dict[str, Any] = {"data.doc_bytes": DataSpec.doc_bytes,
                                       "train.checkpoint_val_tokens": TrainSpec.checkpoint_val_tokens}


def drop_key_neutral_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (sections → fields) without the KEY_NEUTRAL_FIELDS left at their default; changed in place, returned."""
    for dotted, default in KEY_NEUTRAL_FIELDS.items():
        section, leaf = dotted.split(".", 1)
        if leaf in spec.get(section, {}) and spec[section][leaf] == default:
            del spec[section][leaf]
    return spec


@dataclass
class RunPoint:
    """One training run: its resolved spec (hashed) and its labels (not hashed)."""

    spec: dict[str, Any]
    arms: list[str] = field(default_factory=list)  # every arm that asked for this run
    varied: dict[str, Any] = field(default_factory=dict)  # dotted path → value, for the arm that named it

    @property
    def optimizer(self) -> str:
        return self.spec["optim"]["name"]

    @property
    def width(self) -> int:
        return self.spec["model"]["ffn_mult"]

    @property
    def seed(self) -> int:
        return self.spec["seed"]

    @property
    def varied_label(self) -> str:
        """The arm's varied fields by leaf name, e.g. 'n_heads=2 steps=800' ('' for the main sweep)."""
        return " ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(self.varied.items()))

    @property
    def group_label(self) -> str:
        """The label of the width group this run belongs to, e.g. 'muon n_heads=2'."""
        return f"{self.optimizer} {self.varied_label}".strip()

    @property
    def label(self) -> str:
        return f"{self.optimizer} k={self.width} seed={self.seed} {self.varied_label}".strip()

    def group_spec(self) -> dict[str, Any]:
        """The spec with the width removed: runs that share it form one scaling-law fit."""
        spec = copy.deepcopy(self.spec)
        spec["model"].pop("ffn_mult")
        return spec


def hparam_overrides(study: DictConfig, name: str, arm_overrides: dict | None,
                     arm_name: str | None = None) -> Iterator[tuple[str, str, Any]]:
    """The overrides of optimizer `name`'s hyperparameters, lowest precedence first: study.optim[family] ←
    study.optim[name] ← the arm's, each as (the dotted key that sets it, hyperparameter, value)."""
    from specscale.optim.defaults import parse_optimizer_name

    family, _ = parse_optimizer_name(name)
    layers = [("optim", to_container(study.optim))]
    if arm_overrides:
        layers.append((f"ablations.{arm_name}.optim" if arm_name else "ablation optim", arm_overrides))
    for origin, overrides in layers:
        for key in (family, name) if family != name else (name,):
            for hkey, value in (overrides.get(key) or {}).items():
                yield f"{origin}.{key}.{hkey}", str(hkey), value


def _is_number_text(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def resolve_hparams(study: DictConfig, name: str, arm_overrides: dict | None, where: Path,
                    arm_name: str | None = None, d_model: int | None = None,
                    lr_multiplier: float = 1.0) -> dict[str, Any]:
    """Defaults for `name` ← study.optim[family] ← study.optim[name] ← the arm's, then lr × `lr_multiplier` (an lr
    sweep arm); unknown keys, and text where a number belongs, fail here. Per-role lrs left tied (None) become numbers
    for `d_model` (default: the study's), so the run spec shows what runs."""
    from specscale.optim.defaults import DTYPE_NAMES, TIED_LRS, default_hparams, resolve_lr_ties

    hparams = default_hparams(name)
    for dotted, hkey, value in hparam_overrides(study, name, arm_overrides, arm_name):
        if hkey not in hparams:
            raise SpecError(f"{where}: key '{dotted}': not a {name} hyperparameter; {did_you_mean(hkey, hparams)}")
        if hkey == "rank_fraction":  # the factory rejects a fraction that contradicts the name
            raise SpecError(f"{where}: key '{dotted}': choose the Dion rank fraction through the optimizer name "
                            f"(e.g. dion_1_4), not an override")
        if hkey.endswith("_dtype") and str(value).removeprefix("torch.") not in DTYPE_NAMES:
            raise SpecError(f"{where}: key '{dotted}': {value!r} is not a dtype name; "
                            f"valid: {', '.join(sorted(DTYPE_NAMES))}")
        default = hparams[hkey]
        numeric = hkey in TIED_LRS or (isinstance(default, (int, float)) and not isinstance(default, bool))
        if numeric and not (value is None and hkey in TIED_LRS) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            # PyYAML reads 1e-3 (no dot) as text: the most likely way a number becomes a string here
            hint = "; YAML reads an exponent without a dot as text: write 1.0e-3, not 1e-3" if _is_number_text(
                value) else ""
            raise SpecError(f"{where}: key '{dotted}': a number is needed, got {value!r}{hint}")
        hparams[hkey] = value
    if lr_multiplier != 1.0:
        hparams["lr"] = hparams["lr"] * lr_multiplier
    return resolve_lr_ties(name, hparams, int(study.model.d_model if d_model is None else d_model))


# (optimizer name, complete hyperparameters, d_model) → None, or ValueError/TypeError from the optimizer's own checks.
HparamCheck = Callable[[str, dict[str, Any], int], None]


def check_hyperparameters(study: DictConfig, points: list[RunPoint], check: HparamCheck,
                          where: Path | str = "params.yaml") -> None:
    """Every distinct optimizer setting of the runs through `check`, the optimizers' own checks (`check_hparams` in
    core/specscale/optim/factory.py builds each one; passed in because study/ does not import torch): a negative lr
    or a momentum of 1 fails at plan time, naming the key that set it, instead of inside a job."""
    from specscale.optim.defaults import default_hparams, resolve_lr_ties

    seen: set[str] = set()
    for point in points:
        name, hparams, d_model = point.optimizer, point.spec["optim"]["hparams"], int(point.spec["model"]["d_model"])
        setting = stable_hash({"name": name, "hparams": hparams, "d_model": d_model})
        if setting in seen:
            continue
        seen.add(setting)
        try:
            check(name, hparams, d_model)
        except (ValueError, TypeError) as err:
            arm = point.arms[0]
            arm_optim = to_container(study.ablations[arm].optim) if arm in study.ablations else None
            key = f"optim.{name}"  # the setting as a whole, unless one override fails by itself
            for dotted, hkey, value in hparam_overrides(study, name, arm_optim, arm):
                alone = resolve_lr_ties(name, {**default_hparams(name), hkey: value}, d_model)
                try:
                    check(name, alone, d_model)
                except (ValueError, TypeError):
                    key = dotted
                    break
            raise SpecError(f"{Path(where)}: key '{key}': {name}: {err}") from None


def _check_optim_keys(keys, prefix: str, where: Path) -> None:
    """Each key is an optimizer name or the family 'dion' (overrides for every dion_<a>_<b>)."""
    from specscale.optim.defaults import parse_optimizer_name

    for key in keys:
        if str(key) == "dion":
            continue
        try:
            parse_optimizer_name(str(key))
        except ValueError as err:
            raise SpecError(f"{where}: key '{prefix}.{key}': {err}") from None


def _check_optim_section(study: DictConfig, where: Path) -> None:
    _check_optim_keys(study.optim.keys(), "optim", where)
    for name, arm in study.ablations.items():
        _check_optim_keys(arm.optim.keys(), f"ablations.{name}.optim", where)


def _typed(study: DictConfig, dotted: str, value: Any) -> Any:
    """A varied value converted to its field's type (0 → 0.0 for a float field), so that an ablation repeating a
    base value hashes to the base run's key."""
    if dotted == LR_MULTIPLIER:
        return float(value)
    section, leaf = dotted.split(".", 1)
    return to_container(OmegaConf.merge(study[section], {leaf: value}))[leaf]


def base_run_spec(study: DictConfig) -> dict[str, Any]:
    train = {k: v for k, v in to_container(study.train).items() if k not in SPEED_ONLY_TRAIN_FIELDS}
    return {"data": to_container(study.data), "model": to_container(study.model), "train": train}


# Train fields that choose which checkpoints are kept (measured), not what is trained: they change the key but not
# the labels, so the matched-loss arm that keeps every checkpoint still reads 'steps=12000' (its family and the
# paper's setting text).
CHECKPOINT_ONLY_TRAIN_FIELDS = ("train.keep_all_checkpoints", "train.keep_checkpoints", "train.checkpoint_val_tokens")


# An lr sweep as one arm: `vary: {optim.lr_multiplier: [0.5, 2]}` trains each optimizer of the arm at its own lr
# times the multiplier (every tied per-role lr follows); labelled by the lr it resolved to ('lr=0.0015').
LR_MULTIPLIER = "optim.lr_multiplier"


def _resolved_labels(varied: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Labels name what a run is: a relative arm (train.steps_multiplier, optim.lr_multiplier) is labelled by the
    value it resolved to, so the matched-loss family, the paper's settings ('steps=12000') and the labels read the
    same however it was asked."""
    out = {k: v for k, v in varied.items() if k not in CHECKPOINT_ONLY_TRAIN_FIELDS}
    if out.pop("train.steps_multiplier", None) is not None:
        out["train.steps"] = spec["train"]["steps"]
    if out.pop(LR_MULTIPLIER, None) is not None:
        out["optim.lr"] = spec["optim"]["hparams"]["lr"]
    return out


def expand_sweep(study: DictConfig, where: Path | str = "params.yaml") -> list[RunPoint]:
    """All training runs of the study, deduplicated by key, main sweep first, in a stable order."""
    where = Path(where)
    _check_optim_section(study, where)
    arms: list[tuple[str, dict[str, list], list, list, list, dict]] = [
        ("main", {}, list(study.sweep.optimizers), list(study.sweep.widths), list(study.sweep.seeds), {})
    ]
    for name, arm in study.ablations.items():
        arms.append((
            str(name),
            {k: [_typed(study, k, v) for v in values] for k, values in arm.vary.items()},
            list(arm.optimizers if arm.optimizers is not None else study.sweep.optimizers),
            list(arm.widths if arm.widths is not None else study.sweep.widths),
            list(arm.seeds if arm.seeds is not None else study.sweep.seeds),
            to_container(arm.optim),
        ))
    runs: dict[str, RunPoint] = {}
    base = base_run_spec(study)
    for arm_name, vary, optimizers, widths, seeds, arm_optim in arms:
        paths = sorted(vary)
        for values in itertools.product(*(vary[p] for p in paths)):
            varied = dict(zip(paths, values))
            lr_multiplier = float(varied.get(LR_MULTIPLIER, 1.0))
            for opt, width, seed in itertools.product(optimizers, widths, seeds):
                spec = copy.deepcopy(base)
                for dotted, value in varied.items():
                    if dotted == LR_MULTIPLIER:
                        continue
                    section, leaf = dotted.split(".", 1)
                    spec[section][leaf] = value
                multiplier = spec["train"].pop("steps_multiplier")  # relative to the base: resolved, not hashed
                spec["train"]["steps"] = max(1, int(round(spec["train"]["steps"] * multiplier)))
                spec["model"]["ffn_mult"] = int(width)
                hparams = resolve_hparams(study, str(opt), arm_optim, where, arm_name, spec["model"]["d_model"],
                                          lr_multiplier)
                spec["optim"] = {"name": str(opt), "hparams": hparams}
                spec["seed"] = int(seed)
                key = stable_hash(drop_key_neutral_defaults(spec))
                if key in runs:
                    if arm_name not in runs[key].arms:
                        runs[key].arms.append(arm_name)
                    continue
                runs[key] = RunPoint(spec=spec, arms=[arm_name], varied=_resolved_labels(varied, spec))
    return list(runs.values())
