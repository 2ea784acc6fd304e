"""The one "did you mean" of the project: spec keys (study/spec.py), optimizer hyperparameters (study/sweep.py,
optim/factory.py) and any other name a user types are answered the same way, with the closest valid name and all of
them, so the fix is on the line that reports the mistake."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, valid: Iterable[str]) -> str:
    """"did you mean 'train'? valid: data, fit, model, ..." (just "valid: ..." when no valid name is close)."""
    names = sorted({str(v) for v in valid})
    close = difflib.get_close_matches(str(word), names, n=1)
    listed = f"valid: {', '.join(names)}" if names else "nothing is valid here"
    return f"did you mean '{close[0]}'? {listed}" if close else listed
