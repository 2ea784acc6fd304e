"""What adding things costs, measured: on a copy of the code, add a metric that gets a β and an optimizer the way
docs/architecture.md ("Adding things") says, count the files each touched, and check that the pipeline's code picks
them up (the fit stage selects the metric's ranks.csv column and fits its β; the factory builds the optimizer and
a study can sweep it). The copy is imported in a subprocess with PYTHONPATH at the copy, never the installed package.

When a count here changes, the docs' sentence changes with it: these constants are the numbers it states.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRIC_FILES = 2  # the registry entry (measure/registry.py) and its function (measure/metrics.py)
OPTIMIZER_FILES = 3  # the optimizer's module, its defaults and name (optim/defaults.py), its construction (factory.py)


def _edit(path: Path, anchor: str, new: str, before: bool = False) -> None:
    """Insert `new` after (or before) the one occurrence of `anchor` in `path`."""
    text = path.read_text()
    assert text.count(anchor) == 1, f"{path.name}: the recipe's anchor {anchor!r} is gone; update this test"
    path.write_text(text.replace(anchor, new + anchor if before else anchor + new))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _touched(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(f for f in after.keys() | before.keys() if before.get(f) != after.get(f))


def _add_metric(lib: Path) -> None:
    """R_½ under its own name, with a β: a registry entry and its function."""
    _edit(lib / "measure/registry.py", "\n)\n_BY_NAME",
          '\n    Metric("half_rank", "half", beta=True, shown=(RANKS_TABLE, BETAS_TABLE)),  # = R_½', before=True)
    _edit(lib / "measure/metrics.py", '''    "hard_rank": lambda log_p, renyi: renyi[2.0],\n''',
          '''    "half_rank": lambda log_p, renyi: math.exp(_log_renyi_rank(log_p, 0.5)),\n''')


SIGNSGD_MODULE = '''\
"""SignSGD with decoupled weight decay: W ← (1 − lr·wd)·W − lr·sign(G)."""

from __future__ import annotations

from typing import Any

import torch

from .defaults import SIGNSGD


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params: Any, lr: float = SIGNSGD["lr"], weight_decay: float = SIGNSGD["weight_decay"]) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(torch.sign(p.grad), alpha=-group["lr"])
'''


def _add_optimizer(lib: Path) -> None:
    """SignSGD on the block matrices (Lion on the rest, as under every matrix optimizer): module, defaults, factory."""
    (lib / "optim/signsgd.py").write_text(SIGNSGD_MODULE)
    _edit(lib / "optim/defaults.py", "# --- the run-spec hyperparameters of each optimizer name",
          'SIGNSGD: Final[Mapping[str, Any]] = MappingProxyType({"lr": 0.01, "weight_decay": 0.0})\n\n', before=True)
    _edit(lib / "optim/defaults.py", '''        "dion": MappingProxyType({**DION, **_LION_SIDE}),\n''',
          '''        "signsgd": MappingProxyType({**SIGNSGD, **_LION_SIDE}),\n''')
    _edit(lib / "optim/factory.py", "from .normuon import NorMuon\n", "from .signsgd import SignSGD\n")
    _edit(lib / "optim/factory.py", "\nMATRIX_OPTIMIZERS: dict[str, MatrixBuilder] = {\n",
          '''    "signsgd": lambda groups, hp: SignSGD(groups, lr=hp["lr"], weight_decay=hp["weight_decay"]),\n''')


# Runs in the copy: everything it imports must come from there.
CHECK = '''
import math, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
import specscale, stages
copy = Path(sys.argv[1]).resolve()
assert Path(specscale.__file__).resolve().is_relative_to(copy), specscale.__file__
assert Path(stages.__file__).resolve().is_relative_to(copy), stages.__file__

# the metric: a ranks.csv column the fit stage selects, fits a β for, and labels
from specscale.measure.metrics import all_metrics, renyi_rank
from specscale.measure.registry import FIT_METRICS, SPECTRUM_COLUMNS, display_name
from specscale.fit.fit import fit_groups, metric_columns
eigs = np.arange(1.0, 33.0) ** -1.2
assert all_metrics(eigs)["half_rank"] == renyi_rank(eigs, 0.5)
assert "half_rank" in metric_columns([*SPECTRUM_COLUMNS, *all_metrics(eigs)])
assert FIT_METRICS == ("soft_rank", "hard_rank", "half_rank") and display_name("half_rank") == "half"
widths = [16, 32, 64]
runs = pd.DataFrame({"run": ["a", "b", "c"], "group": "g", "ffn_dim": widths, "group_label": "x", "optimizer": "o",
                     "seed": 0, "seed_group": "s", "varied": "{}", "arms": ""})
ranks = pd.DataFrame({"run": ["a", "b", "c"], "phase": "trained", "bucket": "GLOBAL", "site": "post",
                      "metric": "half_rank", "median": [2.0 * w ** 0.5 for w in widths], "N_over_D": 8.0,
                      "ffn_dim": widths})
betas = fit_groups(ranks, pd.DataFrame(columns=["run", "phase", "bucket", "site", "metric", "layer", "value"]), runs, 0)
assert len(betas) == 1 and abs(betas["beta"].iloc[0] - 0.5) < 1e-12, betas

# the optimizer: a valid name, built by the factory over the block matrices, one hand-checked step, and swept
from specscale.optim.defaults import VALID_NAME_FORMS, default_hparams
from specscale.optim.factory import build_optimizer, roles_from_names
from specscale.optim.signsgd import SignSGD
assert "'signsgd'" in VALID_NAME_FORMS and default_hparams("signsgd")["lr"] == 0.01
model = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.Linear(4, 3, bias=False)]),
                             "head": torch.nn.Linear(3, 2, bias=False)})
opt = build_optimizer(roles_from_names(model.named_parameters()), "signsgd", {}, d_model=4)
assert isinstance(opt.optimizers["signsgd"], SignSGD) and list(opt.optimizers) == ["signsgd", "lion"]
w = model["blocks"][0].weight
before = w.detach().clone()
model["head"](model["blocks"][0](torch.ones(1, 4))).sum().backward()
expected = before - 0.01 * torch.sign(w.grad)
opt.step()
assert torch.equal(w.detach(), expected)
from specscale.study.spec import load_study
from specscale.study.plan import make_plan
from stages.table import VERSIONS
params = Path(sys.argv[2])
params.write_text("preset: smoke\\nsweep: {optimizers: [adamw, signsgd], widths: [1, 2], seeds: [0]}\\n"
                  "fit: {primary: {comparison: signsgd - adamw}}\\n")
plan = make_plan(load_study(params), VERSIONS, params)
swept = [t for t in plan.train if t.point.optimizer == "signsgd"]
assert len(swept) == 2 and len({t.key for t in plan.train}) == 4
print("ok")
'''


def test_a_metric_with_a_beta_and_an_optimizer_cost_few_files(tmp_path: Path) -> None:
    copy = tmp_path / "code"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "core", copy / "core", ignore=skip)
    shutil.copytree(REPO / "stages", copy / "stages", ignore=skip)
    lib = copy / "core/specscale"
    start = _digests(copy)
    _add_metric(lib)
    with_metric = _digests(copy)
    _add_optimizer(lib)
    metric, optimizer = _touched(start, with_metric), _touched(with_metric, _digests(copy))
    assert metric == ["core/specscale/measure/metrics.py", "core/specscale/measure/registry.py"]
    assert optimizer == ["core/specscale/optim/defaults.py", "core/specscale/optim/factory.py",
                         "core/specscale/optim/signsgd.py"]
    assert (len(metric), len(optimizer)) == (METRIC_FILES, OPTIMIZER_FILES)

    project = tmp_path / "project"
    shutil.copytree(REPO / "specs", project / "specs")  # the presets a study loads
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy / "core"), str(copy)]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK), str(copy), str(project / "params.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
