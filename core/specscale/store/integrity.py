"""What a finished run held when it was committed, and whether it still holds it.

At commit every file of a run gets a digest in `_CONTENTS.json`; before a stage reuses a cached run it checks them.
A run whose file was truncated, damaged or edited by hand (a checkpoint, a token shard, a spectrum chunk, spec.json)
is never read as data: it is moved aside to runs/.quarantine/<stage>/<key>-<time>/ (never deleted: the user decides)
and computed again under the same key. Runs committed before this check existed have no contents file and are
trusted as before.

Digest of a file: its size and the SHA-256 of its first and last MiB (the whole file below 2 MiB). That catches
truncation, a changed header or tail and any damage to small files, at a cost independent of checkpoint size (a
gpt2-160m run holds ~4 GB of checkpoints; hashing them all at every stage start would cost minutes). Damage in the
middle of a large file is left to its own format's checks (zarr chunks carry CRC32C; torch checkpoints are zip files
with per-entry CRC-32).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

CONTENTS_FILE = "_CONTENTS.json"
QUARANTINE = ".quarantine"
_EDGE = 1 << 20  # bytes hashed at each end of a large file


def file_digest(path: Path) -> str:
    """'<size>:<sha256 hex>' of the whole file (≤ 2 MiB) or of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 2 * _EDGE:
            h.update(fh.read())
        else:
            h.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
    return f"{size}:{h.hexdigest()}"


def write_contents(run_dir: Path) -> None:
    """Record the digest of every file of a run about to be committed (called last before its _SUCCESS marker,
    which is not recorded: it is written after)."""
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name != CONTENTS_FILE)
    tmp = run_dir / f".{CONTENTS_FILE}.tmp"
    tmp.write_text(json.dumps({str(p.relative_to(run_dir)): file_digest(p) for p in files}, indent=1))
    os.replace(tmp, run_dir / CONTENTS_FILE)


def damaged_files(run_dir: Path) -> list[str]:
    """Files of a finished run that are missing or differ from what was committed (relative paths); [] when the
    run has no contents record (committed before this check) or is intact."""
    record_path = run_dir / CONTENTS_FILE
    if not record_path.exists():
        return []
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return [CONTENTS_FILE]
    bad = []
    for rel, digest in record.items():
        path = run_dir / rel
        if not path.is_file() or file_digest(path) != digest:
            bad.append(rel)
    return bad


def set_aside_if_damaged(runs_root: Path, stage: str, key: str) -> str | None:
    """None for an intact finished run; else move it to the quarantine and return the warning that names the damaged
    files, where the run went and that it will be computed again."""
    run_dir = runs_root / stage / key
    bad = damaged_files(run_dir)
    if not bad:
        return None
    aside = quarantine(runs_root, stage, key)
    project = runs_root.parent
    named = ", ".join(str((run_dir / rel).relative_to(project)) for rel in bad[:3]) + (
        f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return (f"[{stage}] WARNING: {named} differ(s) from what was committed (damaged or edited): the run was moved "
            f"to {aside.relative_to(project)} (kept; remove it when you no longer need it) and is computed again")


def quarantine(runs_root: Path, stage: str, key: str) -> Path:
    """Move runs/<stage>/<key> aside (same filesystem: one rename) and return where it went."""
    target = runs_root / QUARANTINE / stage / f"{key}-{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(runs_root / stage / key, target)
    return target
