"""NorMuon (the paper's variant): Muon plus a per-row second-moment normalisation after orthogonalisation.

After Muon's O (m×n) for W (m×n = fan_out×fan_in):

    s ← mean over columns of O⊙O          # (m, 1): one value per output neuron
    v ← v + (1 − β₂)·(s − v)              # state["second_moment"], (m, 1), starts at 0, no bias correction
    Ô ← O / (√v + ε)
    Ô ← Ô · ‖O‖_F / max(‖Ô‖_F, 1e-8)     # keep Muon's Frobenius norm; the clamp turns 0/0 into 0
    W ← (1 − lr·wd)·W − lr·scale(m, n)·Ô

The rows whose orthogonalised update has been large are damped, small ones lifted, at unchanged total size.
A zero gradient gives O = 0, v = 0, Ô = 0/(0 + ε) = 0 and then 0·0/1e-8 = 0: weights are only decayed, never NaN.

Precision as the paper ran it (vendored microsoft/dion `normuon.py`): Newton–Schulz in `ns_dtype` (bf16 on its GPUs),
then the row statistics, v and the rescale in fp32 (v has the parameter's dtype there, fp32).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .defaults import NORMUON
from .muon import Muon
from .newton_schulz import Coeffs

# Lower bound of ‖Ô‖_F in the rescale: only reached when O is zero (then the result is 0, not NaN).
_NORM_FLOOR = 1e-8


class NorMuon(Muon):
    """Muon whose direction is row-normalised by an EMA of its row second moments (β₂, eps).
    Defaults: `defaults.NORMUON` (docs/science.md §4)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = NORMUON["lr"],
        momentum: float = NORMUON["momentum"],
        nesterov: bool = NORMUON["nesterov"],
        weight_decay: float = NORMUON["weight_decay"],
        scale_rule: str = NORMUON["scale_rule"],
        ns_steps: int = NORMUON["ns_steps"],
        ns_coeffs: str | Sequence[Coeffs] = NORMUON["ns_coeffs"],
        ns_dtype: torch.dtype | str = NORMUON["ns_dtype"],
        ns_eps: float = NORMUON["ns_eps"],
        beta2: float = NORMUON["beta2"],
        eps: float = NORMUON["eps"],
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            scale_rule=scale_rule,
            ns_steps=ns_steps,
            ns_coeffs=ns_coeffs,
            ns_dtype=ns_dtype,
            ns_eps=ns_eps,
        )
        # NorMuon's own hyperparameters join the defaults and every group (a group may override them).
        self.defaults.update(beta2=beta2, eps=eps)
        for group in self.param_groups:
            group.setdefault("beta2", beta2)
            group.setdefault("eps", eps)
            if not 0.0 <= group["beta2"] < 1.0:
                raise ValueError(f"beta2 must be in [0, 1), got {group['beta2']}")
            if not group["eps"] > 0.0:
                raise ValueError(f"eps must be > 0, got {group['eps']}")

    def _postprocess(self, O: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        O32 = O.float()  # statistics in fp32 even if the parameter is bf16
        if "second_moment" not in state:
            state["second_moment"] = torch.zeros(O.size(0), 1, dtype=torch.float32, device=O.device)
        v = state["second_moment"]  # (m, 1)
        s = O32.square().mean(dim=1, keepdim=True)  # (m, 1)
        v.lerp_(s, 1.0 - group["beta2"])  # v + (1 − β₂)(s − v)
        O_hat = O32 / (v.sqrt() + group["eps"])
        O_hat = O_hat * (O32.norm() / O_hat.norm().clamp(min=_NORM_FLOOR))
        return O_hat
