"""The one place where the optimizers' default hyperparameters are written (the paper's values, docs/science.md §4).

Every default value appears once here. The optimizer classes take their signature defaults from these tables
(`lr: float = MUON["lr"]`), `orthogonalize` takes its defaults from `NEWTON_SCHULZ`, and `default_hparams` assembles
the per-name dicts that go into the run spec (and its hash). Pure data, no torch: importable from anywhere.

Names: "adamw", "muon", "normuon", "dion_<a>_<b>" (rank fraction f = a/b in (0, 1], e.g. dion_1_16): the keys of
`_HPARAMS`, so an optimizer added there is a valid name everywhere (spec validation, sweep, keys).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

# Floating-point dtypes a precision field may name (ns_dtype; Dion's state_dtype and q_dtype), as torch spells them.
DTYPE_NAMES: Final = ("float32", "float64", "bfloat16", "float16")

# --- the paper's values (docs/science.md §4) --------------------------------------------------------------------

# What the paper runs every matrix optimizer (Muon, NorMuon, Dion) with: one lr (before the shape scale), one momentum,
# one decoupled weight decay and one lr shape-scale rule, so that the three differ only in how they pick a direction.
MATRIX: Final[Mapping[str, Any]] = MappingProxyType(
    {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.01, "scale_rule": "spectral"}
)

# Quintic Newton–Schulz as Muon and NorMuon run it (the coefficient triples themselves live in newton_schulz.py,
# under the name given here). ns_dtype: fp32 here (CPU: bf16 matmuls are ~15× slower); the paper ran NS in bf16,
# which the gpt2 presets set explicitly (docs/science.md §4.2, §9).
NEWTON_SCHULZ: Final[Mapping[str, Any]] = MappingProxyType(
    {"ns_steps": 5, "ns_coeffs": "paper", "ns_dtype": "float32", "ns_eps": 1e-8}
)

# Muon: the arguments of `Muon`, in its hyperparameter order.
MUON: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "lr": MATRIX["lr"],
        "momentum": MATRIX["momentum"],
        "nesterov": True,
        "weight_decay": MATRIX["weight_decay"],
        "scale_rule": MATRIX["scale_rule"],
        **NEWTON_SCHULZ,
    }
)

# NorMuon's own hyperparameters: the EMA factor of the row second moments and the ε of the row normalisation.
_NORMUON_OWN: Final[Mapping[str, Any]] = MappingProxyType({"beta2": 0.95, "eps": 1e-8})
# NorMuon: the arguments of `NorMuon` (Muon's, then its own).
NORMUON: Final[Mapping[str, Any]] = MappingProxyType({**MUON, **_NORMUON_OWN})

# Dion: no Newton–Schulz and no Nesterov step, so those keys are absent (a key that changes nothing must not change
# the run's hash either). rank_fraction is replaced by the fraction in the name; q_seed (the `seed` argument of
# `Dion`) seeds each parameter's starting Q; eps guards the column normalisation of Q. state_dtype is the dtype of
# the accumulator M and of the matmuls with it, q_dtype the stored Q's; QR and the column normalisation always run in
# fp32 (the paper's vendored microsoft/dion, `mixed_precision: true` in every Dion run: M and Q in bf16). fp32 here
# (CPU); the gpt2 presets set the paper's bf16 explicitly (docs/science.md §4.5, §9).
DION: Final[Mapping[str, Any]] = MappingProxyType(
    {**MATRIX, "rank_fraction": 1.0, "eps": 1e-8, "q_seed": 0, "state_dtype": "float32", "q_dtype": "float32"}
)

# Lion: the arguments of `Lion`, the scalar optimizer (embedding, head, 1-D gains) under Muon / NorMuon / Dion. Its
# lr in a run is tied to the matrix optimizer's (`resolve_lr_ties`); the class default is that lr's default.
LION: Final[Mapping[str, Any]] = MappingProxyType({"lr": MATRIX["lr"], "betas": (0.95, 0.98), "weight_decay": 0.0})

# AdamW: one lr for every role (the head's is not scaled by d_model under AdamW), weight decay on block matrices only.
# The per-role lrs default to None = tied to `lr` (the authors' code sets every param group's lr to lr under AdamW),
# so an lr sweep moves all of them; `resolve_lr_ties` writes the numbers into the run spec.
_ADAMW_LR: Final = 3e-3
_ADAMW_SCALAR_WEIGHT_DECAY: Final = 0.0
ADAMW: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "lr": _ADAMW_LR,
        "betas": (0.9, 0.95),
        "eps": 1e-8,
        "weight_decay": 0.01,
        "embed_lr": None,
        "embed_weight_decay": _ADAMW_SCALAR_WEIGHT_DECAY,
        "head_lr": None,
        "head_weight_decay": _ADAMW_SCALAR_WEIGHT_DECAY,
        "other_lr": None,
        "other_weight_decay": _ADAMW_SCALAR_WEIGHT_DECAY,
    }
)

# --- the run-spec hyperparameters of each optimizer name (arrangements of the values above) ---------------------

# The scalar (Lion) side shared by Muon, NorMuon and Dion. The lrs default to None = tied to the run's `lr`, as in the
# authors' code (optimizer_factory.py: embedding lr = lr, head lr = lr / √d_model): `resolve_lr_ties` writes the
# numbers into the run spec, so a sweep over `lr` moves all three. A number given explicitly unties that one.
_LION_SIDE: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "lion_betas": LION["betas"],
        "lion_weight_decay": LION["weight_decay"],
        "embed_lr": None,
        "head_lr": None,
        "other_lr": None,
    }
)
TIED_LRS: Final = ("embed_lr", "head_lr", "other_lr")  # per-role keys whose None means "tied to lr"

# Key order is part of the contract (the dicts go into the run spec as they are).
_HPARAMS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "adamw": ADAMW,
        "muon": MappingProxyType({**MUON, **_LION_SIDE}),
        "normuon": MappingProxyType({**MUON, **_LION_SIDE, **_NORMUON_OWN}),
        "dion": MappingProxyType({**DION, **_LION_SIDE}),
    }
)

# Bases whose names carry a parameter ("dion_1_16"): not valid names by themselves.
_NAME_FAMILIES: Final = ("dion",)
# Every other key of _HPARAMS is a valid name as it stands: a new optimizer is named by its _HPARAMS entry alone.
PLAIN_NAMES: Final = tuple(k for k in _HPARAMS if k not in _NAME_FAMILIES)
VALID_NAME_FORMS = (
    ", ".join(repr(n) for n in PLAIN_NAMES) + ", or 'dion_<a>_<b>' with integers 1 <= a <= b "
    "(rank fraction a/b, e.g. 'dion_1_2', 'dion_1_16')"
)
_DION_NAME = re.compile(r"dion_([1-9][0-9]*)_([1-9][0-9]*)")


def parse_optimizer_name(name: str) -> tuple[str, float | None]:
    """(name, None) for a plain name ("adamw", "muon", "normuon", `PLAIN_NAMES`) or ("dion", a/b) for
    "dion_<a>_<b>"; any other name fails, listing the valid forms."""
    if name in PLAIN_NAMES:
        return name, None
    match = _DION_NAME.fullmatch(name) if isinstance(name, str) else None
    if match:
        a, b = int(match.group(1)), int(match.group(2))
        if a <= b:
            return "dion", a / b
    raise ValueError(f"unknown optimizer name {name!r}; valid forms: {VALID_NAME_FORMS}")


def resolve_lr_ties(name: str, hparams: Mapping[str, Any], d_model: int) -> dict[str, Any]:
    """A copy of `hparams` (every key of `name`) with the tied per-role lrs as numbers (docs/science.md §4.6): a None
    embed_lr or other_lr becomes lr; a None head_lr becomes lr / √d_model under Lion and lr under AdamW."""
    hp = dict(hparams)
    head_lr = hp["lr"] if parse_optimizer_name(name)[0] == "adamw" else hp["lr"] / math.sqrt(d_model)
    tied = {"embed_lr": hp["lr"], "head_lr": head_lr, "other_lr": hp["lr"]}
    for key in TIED_LRS:
        if hp[key] is None:
            hp[key] = tied[key]
    return hp


def default_hparams(name: str) -> dict[str, Any]:
    """A fresh, JSON-serialisable dict of every hyperparameter of the named optimizer (docs/science.md §4).
    Pairs such as betas come as lists (what JSON gives back), each call a new list."""
    base, fraction = parse_optimizer_name(name)
    hp = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in _HPARAMS[base].items()}
    if fraction is not None:
        hp["rank_fraction"] = fraction
    return hp
