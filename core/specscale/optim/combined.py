"""Several torch optimizers behind one object with torch-optimizer semantics.

The training loop sees `.step()`, `.zero_grad()`, a flat `.param_groups` (every group carries "initial_lr", so a
schedule can set group["lr"] = group["initial_lr"] * factor), and one `state_dict()` covering every inner optimizer,
so that a resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CombinedOptimizer:
    """Inner optimizers keyed by a label (e.g. {"muon": Muon(...), "lion": Lion(...)}), stepped in that order."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(optimizers)
        for label, opt in self.optimizers.items():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group.setdefault("optimizer", label)  # for logs: which inner optimizer owns this group

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizers' own group dicts (not copies): writing group["lr"] changes the inner optimizer."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        """Per-parameter state of all inner optimizers (each parameter belongs to exactly one)."""
        merged: dict[Any, Any] = {}
        for opt in self.optimizers.values():
            merged.update(opt.state)
        return merged

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {label: opt.state_dict() for label, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["optimizers"]
        if list(saved) != list(self.optimizers):
            raise ValueError(f"checkpoint holds optimizers {list(saved)}, this one has {list(self.optimizers)}")
        for label, opt in self.optimizers.items():
            # torch only checks group sizes; a parameter renamed or re-routed between save and load would silently
            # receive another parameter's state, so compare the names too.
            now = [g.get("param_names") for g in opt.param_groups]
            then = [g.get("param_names") for g in saved[label]["param_groups"]]
            if now != then:
                raise ValueError(f"optimizer {label!r}: checkpoint parameter names {then} differ from current {now}")
            opt.load_state_dict(saved[label])

    def __repr__(self) -> str:
        inner = ", ".join(f"{label}={type(opt).__name__}" for label, opt in self.optimizers.items())
        return f"CombinedOptimizer({inner})"
