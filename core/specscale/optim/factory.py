"""From an optimizer name and hyperparameters to one optimizer object over a model, routed by parameter role.

Roles (from the parameter names, never from shapes — the embedding and the head are 2-D too):
  "matrix": 2-D block matrices (q, k, v, o, c_fc, c_proj)  → AdamW, or Muon / NorMuon / Dion
  "embed":  embed.*                                          → AdamW, or Lion
  "head":   head.*                                           → AdamW, or Lion (lr / √d_model unless given)
  "other":  anything else (1-D gains, ...)                   → AdamW, or Lion

Names: "adamw", "muon", "normuon", "dion_<a>_<b>" (rank fraction f = a/b in (0, 1], e.g. dion_1_16). The names and
every default hyperparameter are owned by `defaults` (docs/science.md §4); `parse_optimizer_name`, `default_hparams`
and `VALID_NAME_FORMS` are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from specscale.hints.spelling import did_you_mean

from .combined import CombinedOptimizer
from .defaults import VALID_NAME_FORMS, default_hparams, parse_optimizer_name, resolve_lr_ties
from .dion import Dion
from .lion import Lion
from .muon import Muon
from .normuon import NorMuon

ROLES: tuple[str, ...] = ("matrix", "embed", "head", "other")

__all__ = [
    "MATRIX_OPTIMIZERS",
    "ROLES",
    "VALID_NAME_FORMS",
    "build_optimizer",
    "check_hparams",
    "complete_hparams",
    "default_hparams",
    "parse_optimizer_name",
    "resolve_lr_ties",
    "roles_from_names",
]


def complete_hparams(name: str, hparams: dict[str, Any] | None) -> dict[str, Any]:
    """Every hyperparameter of `name`: its defaults (`default_hparams`, key order kept) overridden by `hparams`.

    Unknown keys fail, naming the key, the closest valid one and all valid (`did_you_mean`); so does a Dion
    rank_fraction that contradicts the name.
    """
    resolved = default_hparams(name)
    for key in hparams or {}:
        if key not in resolved:
            raise ValueError(f"unknown hyperparameter {key!r} for optimizer {name!r}; {did_you_mean(key, resolved)}")
    resolved.update(hparams or {})
    base, fraction = parse_optimizer_name(name)
    if base == "dion" and resolved["rank_fraction"] != fraction:
        raise ValueError(
            f"rank_fraction={resolved['rank_fraction']!r} contradicts optimizer name {name!r} (fraction {fraction}); "
            f"choose the fraction through the name"
        )
    return resolved


def roles_from_names(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The naming rule: embed.* → embed, head.* → head, 2-D under blocks.* → matrix, everything else → other.
    Parameters that do not require grad are left out."""
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        if name.startswith("embed."):
            roles["embed"].append((name, p))
        elif name.startswith("head."):
            roles["head"].append((name, p))
        elif name.startswith("blocks.") and p.ndim == 2:
            roles["matrix"].append((name, p))
        else:
            roles["other"].append((name, p))
    return roles


def _check_roles(params_by_role: dict[str, list[tuple[str, nn.Parameter]]]) -> None:
    unknown = set(params_by_role) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown parameter roles {sorted(unknown)}; valid: {list(ROLES)}")
    seen: dict[int, str] = {}
    for role, named in params_by_role.items():
        for pname, p in named:
            if id(p) in seen:
                raise ValueError(f"parameter {pname!r} is listed twice (also as {seen[id(p)]!r})")
            seen[id(p)] = pname


def _group(params_by_role: dict[str, list[tuple[str, nn.Parameter]]], role: str, **hp: Any) -> list[dict[str, Any]]:
    """One param group for `role` (none if the role is empty); named params so state_dict carries param_names."""
    named = list(params_by_role.get(role, []))
    return [{"params": named, "role": role, **hp}] if named else []


# The matrix optimizers (role "matrix", with Lion on the other roles): base name (defaults.parse_optimizer_name) →
# its construction from the matrix param groups and the complete hyperparameters. A name defaults.py knows but this
# table lacks fails in build_optimizer: before this table such a name silently trained with NorMuon.
MatrixBuilder = Callable[[list[dict[str, Any]], dict[str, Any]], torch.optim.Optimizer]


def _shared(hp: dict[str, Any]) -> dict[str, Any]:
    """What every matrix optimizer takes (defaults.MATRIX)."""
    return dict(lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"], scale_rule=hp["scale_rule"])


def _newton_schulz(hp: dict[str, Any]) -> dict[str, Any]:
    """Muon's and NorMuon's orthogonalisation and Nesterov step."""
    keys = ("nesterov", "ns_steps", "ns_coeffs", "ns_dtype", "ns_eps")
    return {k: hp[k] for k in keys}


MATRIX_OPTIMIZERS: dict[str, MatrixBuilder] = {
    "muon": lambda groups, hp: Muon(groups, **_shared(hp), **_newton_schulz(hp)),
    "normuon": lambda groups, hp: NorMuon(groups, beta2=hp["beta2"], eps=hp["eps"], **_shared(hp),
                                          **_newton_schulz(hp)),
    "dion": lambda groups, hp: Dion(groups, rank_fraction=hp["rank_fraction"], eps=hp["eps"], seed=hp["q_seed"],
                                    state_dtype=hp["state_dtype"], q_dtype=hp["q_dtype"], **_shared(hp)),
}


def build_optimizer(
    params_by_role: dict[str, list[tuple[str, nn.Parameter]]],
    name: str,
    hparams: dict[str, Any] | None,
    d_model: int,
) -> CombinedOptimizer:
    """One CombinedOptimizer: the matrix optimizer over role "matrix", the scalar optimizer over the rest. A name
    without a construction here (`MATRIX_OPTIMIZERS`, or "adamw") fails, naming the known ones."""
    _check_roles(params_by_role)
    base, _ = parse_optimizer_name(name)
    if base != "adamw" and base not in MATRIX_OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} has no construction in specscale/optim/factory.py (MATRIX_OPTIMIZERS); "
                         f"known: {', '.join(sorted(['adamw', *MATRIX_OPTIMIZERS]))}")
    hp = resolve_lr_ties(name, complete_hparams(name, hparams), d_model)  # a no-op on a run spec's (resolved) hparams
    inner: dict[str, torch.optim.Optimizer] = {}

    if base == "adamw":
        groups = (
            _group(params_by_role, "matrix", lr=hp["lr"], weight_decay=hp["weight_decay"])
            + _group(params_by_role, "embed", lr=hp["embed_lr"], weight_decay=hp["embed_weight_decay"])
            + _group(params_by_role, "head", lr=hp["head_lr"], weight_decay=hp["head_weight_decay"])
            + _group(params_by_role, "other", lr=hp["other_lr"], weight_decay=hp["other_weight_decay"])
        )
        if any(g["lr"] is None for g in groups):
            raise ValueError("AdamW needs numeric lr, embed_lr, head_lr and other_lr (None = tied is only for Lion)")
        for g in groups:  # torch checks only the constructor's lr and weight decay, not each role's group
            if not (g["lr"] >= 0.0 and g["weight_decay"] >= 0.0):
                raise ValueError(f"AdamW {g['role']} group: lr and weight_decay must be >= 0, got lr={g['lr']}, "
                                 f"weight_decay={g['weight_decay']}")
        if groups:
            inner["adamw"] = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"])
        return CombinedOptimizer(inner)

    matrix_groups = _group(params_by_role, "matrix")
    if matrix_groups:
        inner[name] = MATRIX_OPTIMIZERS[base](matrix_groups, hp)

    lion_wd = hp["lion_weight_decay"]
    scalar_groups = (
        _group(params_by_role, "embed", lr=hp["embed_lr"], weight_decay=lion_wd)
        + _group(params_by_role, "head", lr=hp["head_lr"], weight_decay=lion_wd)
        + _group(params_by_role, "other", lr=hp["other_lr"], weight_decay=lion_wd)
    )
    if scalar_groups:
        inner["lion"] = Lion(scalar_groups, lr=hp["embed_lr"], betas=tuple(hp["lion_betas"]), weight_decay=lion_wd)
    return CombinedOptimizer(inner)


# One parameter per role of `roles_from_names`, shaped like a tiny block (the roles come from these names); a
# rectangular matrix each way round, so that shape-dependent code (the lr scale, Dion's rank) runs on both.
_DUMMY_SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (8, 4),
    "head.weight": (8, 4),
    "blocks.0.mlp.c_fc.weight": (16, 4),
    "blocks.0.mlp.c_proj.weight": (4, 16),
    "blocks.0.ln.weight": (4,),
}


def check_hparams(name: str, hparams: dict[str, Any], d_model: int) -> None:
    """Build optimizer `name` with `hparams` as training builds it, over tiny parameters of every role, and take one
    step: the optimizers' own checks (an lr or weight decay below 0, a momentum outside [0, 1), Newton–Schulz
    coefficients, a dtype name, Dion's rank fraction) and any value that fails only in arithmetic raise here, at plan
    time (`specscale validate`, the validate stage), instead of minutes into a job. Raises ValueError or TypeError."""
    generator = torch.Generator().manual_seed(0)
    named = [(pname, nn.Parameter(torch.randn(shape, generator=generator))) for pname, shape in _DUMMY_SHAPES.items()]
    optimizer = build_optimizer(roles_from_names(named), name, hparams, d_model)
    for _, param in named:
        param.grad = torch.randn(param.shape, generator=generator)
    optimizer.step()
