"""Wall seconds per named phase of a computation, summed over every call (the spectra stage: checkpoint load,
probe forward, activation write, covariance, eigendecomposition). The spectra run records them in its provenance;
`specscale calibrate` scales each phase by its own law (tokens, D, D², D³) to extrapolate a study.

On CUDA, work is asynchronous: a phase ends with a device synchronisation, so its kernels count in the phase that
launched them, not in whichever later phase first waits for them.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


class PhaseClock:
    def __init__(self, device: torch.device | str | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = device is not None and torch.device(device).type == "cuda"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - started

    def as_dict(self) -> dict[str, float]:
        """Seconds per phase, rounded to the millisecond (for provenance.json)."""
        return {name: round(seconds, 3) for name, seconds in sorted(self.seconds.items())}
