"""Factory: names, defaults, hparam validation, routing by role, scalar-optimizer updates, schedule hooks, resume."""

from __future__ import annotations

import inspect
import io
import json
import math

import pytest
import torch
from torch import nn

from specscale.optim.combined import CombinedOptimizer
from specscale.optim.dion import Dion
from specscale.optim.lion import Lion
from specscale.optim.muon import Muon
from specscale.optim.normuon import NorMuon
from specscale.optim import factory
from specscale.optim.factory import build_optimizer, complete_hparams, roles_from_names
from specscale.optim.defaults import default_hparams, parse_optimizer_name, resolve_lr_ties
from specscale.optim.newton_schulz import orthogonalize

VOCAB, D, HIDDEN, LAYERS = 32, 8, 16, 2
ALL_NAMES = ["adamw", "muon", "normuon", "dion_1_2", "dion_1_16"]


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.v(x) * torch.sigmoid(self.q(x) * self.k(x)))  # stand-in mixing, no real attention


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(D, HIDDEN, bias=False)  # (HIDDEN, D)
        self.c_proj = nn.Linear(HIDDEN, D, bias=False)  # (D, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.relu(self.c_fc(x)) ** 2)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.mlp = _Attn(), _MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class TinyLM(nn.Module):
    """The model's parameter names and layouts, plus one 1-D parameter ("other" role)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList(_Block() for _ in range(LAYERS))
        self.final_gain = nn.Parameter(torch.ones(D))
        self.head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x * self.final_gain)


def _model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    idx = torch.randint(0, VOCAB, (4, 6), generator=gen)
    return idx, torch.roll(idx, -1, dims=1)


def _train(model: TinyLM, opt: CombinedOptimizer, steps: range) -> None:
    for step in steps:
        idx, tgt = _batch(step)
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _build(model: TinyLM, name: str, **hp: object) -> CombinedOptimizer:
    return build_optimizer(roles_from_names(model.named_parameters()), name, dict(hp), d_model=D)


# --- names and hyperparameters ----------------------------------------------------------------------------------


def test_parse_optimizer_name() -> None:
    assert parse_optimizer_name("adamw") == ("adamw", None)
    assert parse_optimizer_name("muon") == ("muon", None)
    assert parse_optimizer_name("normuon") == ("normuon", None)
    assert parse_optimizer_name("dion_1_2") == ("dion", 0.5)
    assert parse_optimizer_name("dion_1_16") == ("dion", 0.0625)
    assert parse_optimizer_name("dion_3_4") == ("dion", 0.75)
    assert parse_optimizer_name("dion_1_1") == ("dion", 1.0)
    for bad in ["dion", "dion_2_1", "dion_0_2", "dion_1_0", "dion_1_2x", "Muon", "sgd", "dion_1.5_2", ""]:
        with pytest.raises(ValueError, match=r"valid forms: 'adamw', 'muon', 'normuon', or 'dion_<a>_<b>'"):
            parse_optimizer_name(bad)


def test_default_hparams_exact_and_json() -> None:
    lion = {"lion_betas": [0.95, 0.98], "lion_weight_decay": 0.0, "embed_lr": None, "head_lr": None, "other_lr": None}
    muon = {
        "lr": 0.02,
        "momentum": 0.95,
        "nesterov": True,
        "weight_decay": 0.01,
        "scale_rule": "spectral",
        "ns_steps": 5,
        "ns_coeffs": "paper",
        "ns_dtype": "float32",
        "ns_eps": 1e-8,
        **lion,
    }
    assert default_hparams("adamw") == {
        "lr": 3e-3,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "weight_decay": 0.01,
        "embed_lr": None,  # tied to lr (resolve_lr_ties)
        "embed_weight_decay": 0.0,
        "head_lr": None,
        "head_weight_decay": 0.0,
        "other_lr": None,
        "other_weight_decay": 0.0,
    }
    assert default_hparams("muon") == muon
    assert default_hparams("normuon") == {**muon, "beta2": 0.95, "eps": 1e-8}
    assert default_hparams("dion_1_8") == {
        "lr": 0.02,
        "momentum": 0.95,
        "weight_decay": 0.01,
        "scale_rule": "spectral",
        "rank_fraction": 0.125,
        "eps": 1e-8,
        "q_seed": 0,
        "state_dtype": "float32",
        "q_dtype": "float32",
        **lion,
    }
    for name in ALL_NAMES:
        hp = default_hparams(name)
        assert json.loads(json.dumps(hp)) == hp
    # Fresh copies: mutating one result must not leak into the next.
    default_hparams("muon")["lion_betas"].append(1.0)
    assert default_hparams("muon")["lion_betas"] == [0.95, 0.98]


def _signature_defaults(fn: object) -> dict[str, object]:
    params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def test_class_defaults_are_the_run_spec_defaults() -> None:
    """An optimizer built directly and one built by name from default_hparams run the same hyperparameters."""
    muon, normuon, dion = default_hparams("muon"), default_hparams("normuon"), default_hparams("dion_1_1")
    assert _signature_defaults(Muon) == {k: muon[k] for k in _signature_defaults(Muon)}
    assert list(_signature_defaults(Muon)) == [k for k in muon if not k.endswith("_lr") and not k.startswith("lion_")]
    assert _signature_defaults(NorMuon) == {k: normuon[k] for k in _signature_defaults(NorMuon)}
    assert set(_signature_defaults(NorMuon)) == set(_signature_defaults(Muon)) | {"beta2", "eps"}
    dion_args = {("q_seed" if k == "seed" else k): v for k, v in _signature_defaults(Dion).items()}
    assert dion_args == {k: dion[k] for k in dion_args}
    assert set(dion_args) == {
        "lr", "momentum", "weight_decay", "scale_rule", "rank_fraction", "eps", "q_seed", "state_dtype", "q_dtype"
    }
    assert _signature_defaults(Lion) == {
        "lr": muon["lr"],  # the Lion lrs are tied to lr (defaults.resolve_lr_ties)
        "betas": tuple(muon["lion_betas"]),
        "weight_decay": muon["lion_weight_decay"],
    }
    ns = _signature_defaults(orthogonalize)
    assert ns == {k: muon[f"ns_{k}"] for k in ("steps", "coeffs", "eps", "dtype")}


def test_complete_hparams_overrides_defaults_in_order() -> None:
    given = {"lr": 0.01, "lion_betas": [0.9, 0.99]}
    hp = complete_hparams("muon", given)
    assert hp == {**default_hparams("muon"), **given}
    assert list(hp) == list(default_hparams("muon"))  # key order is the defaults' (the spec hash sees it)
    assert given == {"lr": 0.01, "lion_betas": [0.9, 0.99]}  # the caller's dict is not modified
    for name in ALL_NAMES:
        assert complete_hparams(name, None) == complete_hparams(name, {}) == default_hparams(name)
    assert complete_hparams("dion_1_16", {"rank_fraction": 0.0625})["rank_fraction"] == 0.0625
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'ns_steps' for optimizer 'dion_1_2'"):
        complete_hparams("dion_1_2", {"ns_steps": 3})


def test_hparam_errors() -> None:
    model = _model()
    did_you_mean = r"unknown hyperparameter 'weight_decy'.*did you mean 'weight_decay'\? valid: .*weight_decay"
    with pytest.raises(ValueError, match=did_you_mean):
        _build(model, "muon", weight_decy=0.1)
    with pytest.raises(ValueError, match="'nesterov'"):  # Dion has no Nesterov step: the key is not valid there
        _build(model, "dion_1_2", nesterov=True)
    with pytest.raises(ValueError, match="contradicts optimizer name 'dion_1_2'"):
        _build(model, "dion_1_2", rank_fraction=0.25)
    with pytest.raises(ValueError, match="scale_rule"):
        _build(model, "muon", scale_rule="bogus")
    roles = roles_from_names(model.named_parameters())
    with pytest.raises(ValueError, match="unknown parameter roles"):
        build_optimizer({**roles, "bias": []}, "muon", {}, D)
    with pytest.raises(ValueError, match="listed twice"):
        build_optimizer({**roles, "other": roles["other"] + roles["head"]}, "muon", {}, D)
    with pytest.raises(ValueError, match="only optimizes 2-D"):
        build_optimizer({"matrix": roles["other"]}, "muon", {}, D)


def test_a_name_the_factory_cannot_build_fails_instead_of_training_normuon(monkeypatch: pytest.MonkeyPatch) -> None:
    """An optimizer that defaults.py names (faked here: 'sgdx', with NorMuon's hyperparameters) but the factory has
    no construction for fails, naming it and the known ones; it used to train silently with NorMuon."""
    as_normuon = lambda name: "normuon" if name == "sgdx" else name
    monkeypatch.setattr(factory, "parse_optimizer_name",
                        lambda name: ("sgdx", None) if name == "sgdx" else parse_optimizer_name(name))
    monkeypatch.setattr(factory, "complete_hparams", lambda name, hp: complete_hparams(as_normuon(name), hp))
    monkeypatch.setattr(factory, "resolve_lr_ties", lambda name, hp, d: resolve_lr_ties(as_normuon(name), hp, d))
    with pytest.raises(ValueError, match=r"optimizer 'sgdx' has no construction.*known: adamw, dion, muon, normuon"):
        _build(_model(), "sgdx")
    roles = roles_from_names(_model().named_parameters())
    with pytest.raises(ValueError, match="'sgdx'"):  # also without block matrices: the name is wrong either way
        build_optimizer({**roles, "matrix": []}, "sgdx", {}, D)
    assert isinstance(_build(_model(), "normuon").optimizers["normuon"], NorMuon)  # the others still build


# --- routing ------------------------------------------------------------------------------------------------------


def test_roles_from_names() -> None:
    roles = roles_from_names(_model().named_parameters())
    names = {role: [n for n, _ in named] for role, named in roles.items()}
    assert names["embed"] == ["embed.weight"]
    assert names["head"] == ["head.weight"]
    assert names["other"] == ["final_gain"]
    assert names["matrix"] == [
        f"blocks.{i}.{sub}.weight"
        for i in range(LAYERS)
        for sub in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.c_fc", "mlp.c_proj")
    ]


@pytest.mark.parametrize(("name", "cls"), [("muon", Muon), ("normuon", NorMuon), ("dion_1_2", Dion)])
def test_matrix_optimizer_gets_only_block_matrices(name: str, cls: type) -> None:
    model = _model()
    opt = _build(model, name)
    assert list(opt.optimizers) == [name, "lion"]
    matrix_opt, lion = opt.optimizers[name], opt.optimizers["lion"]
    assert type(matrix_opt) is cls and type(lion) is Lion
    roles = roles_from_names(model.named_parameters())
    assert [p for g in matrix_opt.param_groups for p in g["params"]] == [p for _, p in roles["matrix"]]
    groups = {g["role"]: g for g in lion.param_groups}
    names = [groups[r]["param_names"] for r in ("embed", "head", "other")]
    assert names == [["embed.weight"], ["head.weight"], ["final_gain"]]
    assert groups["embed"]["lr"] == 0.02
    assert groups["head"]["lr"] == pytest.approx(0.02 / math.sqrt(D), rel=1e-15)
    assert all(g["weight_decay"] == 0.0 and g["betas"] == (0.95, 0.98) for g in lion.param_groups)


@pytest.mark.parametrize("name", ["muon", "normuon", "dion_1_2"])
def test_embed_and_head_step_is_exactly_lion(name: str) -> None:
    model = _model()
    opt = _build(model, name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt, range(1))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    # Lion's first step from M = 0 with wd 0: W − lr·sign((1 − β₁)·G) = W − lr·sign(G).
    for pname, lr in [("embed.weight", 0.02), ("head.weight", 0.02 / math.sqrt(D)), ("final_gain", 0.02)]:
        p = dict(model.named_parameters())[pname]
        assert torch.equal(p.detach(), before[pname] - lr * torch.sign(grads[pname])), pname
        assert set(opt.state[p]) == {"exp_avg"}
    for pname, p in model.named_parameters():
        if pname.startswith("blocks."):
            assert "exp_avg" not in opt.state[p] and set(opt.state[p]) & {"momentum_buffer", "M"}


def test_adamw_routes_everything_to_adamw_with_role_hparams() -> None:
    model, ref_model = _model(), _model()
    opt = _build(model, "adamw")
    assert list(opt.optimizers) == ["adamw"] and type(opt.optimizers["adamw"]) is torch.optim.AdamW
    roles = roles_from_names(ref_model.named_parameters())
    ref = torch.optim.AdamW(
        [
            {"params": [p for _, p in roles["matrix"]], "weight_decay": 0.01},
            {"params": [p for _, p in roles["embed"] + roles["head"] + roles["other"]], "weight_decay": 0.0},
        ],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    _train(model, opt, range(2))
    _train(ref_model, CombinedOptimizer({"ref": ref}), range(2))
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, q), n


# --- schedule hooks and zero_grad -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_param_groups_initial_lr_and_zero_lr_freezes(name: str) -> None:
    model = _model()
    opt = _build(model, name)
    groups = opt.param_groups
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["initial_lr"] == g["lr"] for g in groups)
    for g in groups:  # what a schedule does at the end of the linear decay
        g["lr"] = g["initial_lr"] * 0.0
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, range(1))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


# --- checkpoint / resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_resume_is_bit_for_bit(name: str) -> None:
    straight = _model()
    opt = _build(straight, name)
    _train(straight, opt, range(10))

    first = _model()
    opt_first = _build(first, name)
    _train(first, opt_first, range(5))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt_first.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)

    resumed = _model(seed=99)  # different init: everything must come from the checkpoint
    opt_resumed = _build(resumed, name)
    resumed.load_state_dict(ckpt["model"])
    opt_resumed.load_state_dict(ckpt["optim"])
    _train(resumed, opt_resumed, range(5, 10))
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), f"{name}: {n}"


def test_load_state_dict_rejects_other_routing() -> None:
    model = _model()
    saved = _build(model, "muon").state_dict()
    with pytest.raises(ValueError, match="holds optimizers"):
        _build(model, "dion_1_2").load_state_dict(saved)
    roles = roles_from_names(model.named_parameters())
    swapped = build_optimizer(
        {"matrix": roles["matrix"], "embed": roles["head"], "head": roles["embed"], "other": roles["other"]},
        "muon",
        {},
        D,
    )
    with pytest.raises(ValueError, match="parameter names"):
        swapped.load_state_dict(saved)
