"""Restore a stage's finished runs from the DVC remote before the stage decides what is missing.

DVC disables its run cache for `persist: true` outputs and `dvc repro --pull` does not restore them, so a
collaborator who cloned the repository (or changed the sweep before pulling) would recompute every run a colleague
already pushed. Before computing, a stage therefore pulls the runs it lacks, one granular target per run
(`dvc pull runs/<stage>/<key> ...`): DVC checks out exactly those sub-paths of the recorded output, never touches
the runs already here (a whole-output pull would refuse, or delete, runs that dvc.lock does not know yet), and
ignores targets the recorded output does not contain (new runs). The nested `dvc` works because `dvc repro`
releases the repository lock while a stage's command runs.

Only with a default remote: without one, a run deleted by hand is recomputed, as before. SPECSCALE_RESTORE=0
turns the restore off (compute instead, e.g. while the remote is unreachable).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

import yaml

from specscale.store.runs import RunStore

# what DVC prints when the remote answers but lacks objects (never pushed, or pushed from elsewhere): not an error
# for us, the runs are simply computed
MISSING_MARKS = ("Missing cache files", "missing-files", "do not exist neither locally nor on remote")
# what it prints when the remote cannot be read at all: an error even if objects are also reported missing
FAILURE_MARKS = ("failed to connect", "Could not connect", "unexpected error", "Forbidden", "AccessDenied",
                 "Access Denied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "credentials", "ExpiredToken",
                 "configuration error", "Permission denied", "timed out")


HINT = ("Fix the remote (URL, endpoint, credentials) and rerun, or set SPECSCALE_RESTORE=0 to compute the missing "
        "runs here instead.")


class RemoteError(RuntimeError):
    """The remote could not be read (unreachable, wrong credentials, bad configuration)."""


def restore_enabled() -> bool:
    return os.environ.get("SPECSCALE_RESTORE", "1").strip().lower() not in ("0", "false", "no", "off")


def default_remote(root: Path) -> tuple[str, str] | None:
    """(name, URL) of the project's default DVC remote, every config level merged (config.local included; a
    relative local path comes back absolute), or None."""
    if not (root / ".dvc").is_dir():
        return None
    from dvc.config import Config  # imported here: only stages that may restore pay for it

    try:
        config = Config(dvc_dir=str(root / ".dvc"))
        name = config["core"].get("remote")
        return (name, str(config["remote"][name]["url"])) if name else None
    except Exception as err:  # a broken config is DVC's to report; restoring is an optimisation
        print(f"warning: cannot read the DVC config ({err}); not restoring runs from a remote", file=sys.stderr)
        return None


def _is_missing_only(message: str) -> bool:
    return any(m in message for m in MISSING_MARKS) and not any(m in message for m in FAILURE_MARKS)


def locked_outputs(root: Path) -> set[str]:
    """Output paths that dvc.lock records: only those have a version the remote can hold."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return set()
    data = yaml.safe_load(lock.read_text()) or {}
    return {out["path"] for stage in (data.get("stages") or {}).values() for out in stage.get("outs") or []}


def pull_targets(root: Path, targets: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """`dvc pull <targets>` in the project, with the interpreter running us (the `dvc` on PATH may be another)."""
    return subprocess.run([sys.executable, "-m", "dvc", "pull", *targets], cwd=root, capture_output=True,
                          text=True, timeout=timeout_s, env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def restore_runs(store: RunStore, stage: str, keys: Iterable[str],
                 echo: Callable[[str], None] = lambda msg: print(msg, flush=True)) -> list[str]:
    """Pull the given runs of `stage` that are not finished here from the default remote; returns those restored.

    Raises RemoteError when the remote cannot be read; nothing local is changed then."""
    root = store.project_root
    missing = sorted({k for k in keys if not store.is_done(stage, k)})
    output = store.stage_dir(stage).relative_to(root).as_posix()
    if not missing or not restore_enabled() or output not in locked_outputs(root):
        return []
    found = default_remote(root)
    if found is None:
        return []
    remote, url = found
    if "://" not in url and not Path(url).is_dir():
        # a local remote that does not exist is an unmounted share, not an empty cache: DVC would only say the
        # files are missing, and every run would be recomputed
        raise RemoteError(f"the DVC remote '{remote}' is the directory {url}, which does not exist (not mounted?). "
                          f"Nothing local was changed. {HINT}")
    echo(f"[{stage}] {len(missing)} runs missing here: pulling those the remote '{remote}' has")
    targets = [f"{output}/{key}" for key in missing]
    out = pull_targets(root, targets)
    restored = [k for k in missing if store.is_done(stage, k)]
    if out.returncode != 0:
        message = (out.stderr.strip() or out.stdout.strip())[-3000:]
        if not _is_missing_only(message):
            raise RemoteError(f"could not restore runs/{stage} from the DVC remote '{remote}':\n{message}\n"
                              f"Nothing local was changed. {HINT}")
        echo(f"[{stage}] the remote '{remote}' lacks some of them (never pushed?): they will be computed")
    echo(f"[{stage}] restored {len(restored)} of {len(missing)} missing runs from the remote '{remote}'")
    return restored
