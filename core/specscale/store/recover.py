"""Recovery from a `dvc repro` killed inside one of DVC's own writes.

DVC rewrites two files in place (open for writing, which truncates, then dump): `.dvc/tmp/rwlock` (which command
reads or writes which path; edited twice around every stage operation) and `dvc.lock` (the hashes of each stage's
deps and outs, rewritten after every stage). A SIGKILL that lands between the truncation and the close leaves the
file empty or cut short, and every later `dvc repro` stops before running anything: `Unable to read RWLock-file
'.dvc/tmp/rwlock'. JSON structure is corrupted` or `'./dvc.lock' validation failed`. Nothing of ours is damaged
(our runs are committed by rename), so the fix is to set the torn file aside: without `rwlock` DVC starts with no
locks held; without `dvc.lock` every stage command runs again, and each one reuses its finished runs.

Both files are judged with DVC's own parsers and schemas, so a file DVC accepts is never touched, and nothing is
done while another DVC process holds the project (the repository lock `.dvc/tmp/lock`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TornFile:
    path: Path
    reason: str  # DVC's own complaint, one line


class ProjectBusy(RuntimeError):
    """Another DVC process holds the repository lock: its files may be mid-write, not torn."""


def _rwlock_problem(path: Path) -> str | None:
    from voluptuous import Invalid

    from dvc.rwlock import SCHEMA

    try:
        SCHEMA(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, Invalid) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"not a valid DVC rwlock file ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def _lockfile_problem(path: Path) -> str | None:
    from dvc.exceptions import DvcException
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.strictyaml import load

    try:
        load(str(path), COMPILED_LOCKFILE_SCHEMA)
    except DvcException as err:
        return f"DVC cannot read it ({str(err).splitlines()[0][:120]})"
    return None


def torn_dvc_files(root: Path) -> list[TornFile]:
    """DVC's in-place files under `root` that DVC itself would refuse to read; [] when all are sound or absent."""
    checks = ((root / ".dvc" / "tmp" / "rwlock", _rwlock_problem), (root / "dvc.lock", _lockfile_problem))
    torn = []
    for path, problem in checks:
        if path.is_file():
            reason = problem(path)
            if reason is not None:
                torn.append(TornFile(path, reason))
    return torn


def recover_torn_dvc_files(root: Path) -> list[tuple[TornFile, Path]]:
    """Move every torn DVC file under `root` to `<name>.torn-<UTC time>` beside it (kept for inspection) and return
    (file, where it went). Raises ProjectBusy, touching nothing, while a DVC process holds the project."""
    from dvc.lock import LockError
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        try:
            repo.lock.lock()
        except LockError as err:
            raise ProjectBusy(f"a DVC process holds {root / '.dvc' / 'tmp' / 'lock'}: let it finish (or stop it) "
                              "and run `specscale recover` again") from err
        try:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = []
            for torn in torn_dvc_files(root):
                target = torn.path.with_name(f"{torn.path.name}.torn-{stamp}")
                torn.path.rename(target)
                moved.append((torn, target))
            return moved
        finally:
            repo.lock.unlock()
    finally:
        repo.close()
