"""What a finished run held when it was committed, and whether it still holds it.

At commit every file of a run gets a digest in `_CONTENTS.json`: its size and the SHA-256 of the whole file, read in
one streaming pass (`sha256:<size>:<hex>`). Two checks read the record:

- quick, before a stage reuses one of its own finished runs (every start, every run): each recorded file is there
  with its recorded size, and files of at most 2 MiB (spec.json, result.json, logs, small chunks) are digested whole.
  Its cost does not grow with checkpoint size (a gpt2-160m run holds ~4 GB of checkpoints).
- full, when a stage is about to read a run as its input (launch/inputs.py): every file digested whole, so a byte
  flipped anywhere is found before it is read.

A run that fails either check (a file truncated, damaged or edited by hand: a checkpoint, a token shard, a spectrum
chunk, spec.json), or that has no contents record at all, is never read as data: it is moved aside to
runs/.quarantine/<stage>/<key>-<time>/ (never deleted: the user decides) and computed again under the same key.

Records written before whole-file digests (`<size>:<hex>`, no algorithm named: the SHA-256 of a file's first and
last MiB) are still checked as they were written. SHA-256 over BLAKE2b: on the 2-core machine we measured
(benchmarks/contents_digest.py, a 640 MB checkpoint; AMD EPYC with SHA instructions) SHA-256 streams 1.2–1.3 GB/s,
BLAKE2b 0.6–0.7 GB/s.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection
from pathlib import Path

CONTENTS_FILE = "_CONTENTS.json"
QUARANTINE = ".quarantine"
ALGORITHM = "sha256"  # named in every digest, so that records made with another one are told apart
SMALL = 2 << 20  # bytes: files up to this size are digested whole by the quick check too
_BLOCK = 1 << 20  # bytes per read of a whole-file digest
_EDGE = 1 << 20  # bytes hashed at each end of a large file by the records made before whole-file digests


def file_digest(path: Path) -> str:
    """'sha256:<size>:<hex>' of the whole file, read in one streaming pass (constant memory)."""
    return _whole_file_digest(path, ALGORITHM)


def _whole_file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        while n := fh.readinto(buf):
            h.update(view[:n])
    return f"{algorithm}:{size}:{h.hexdigest()}"


def _edge_digest(path: Path) -> str:
    """A record made before whole-file digests: '<size>:<sha256 hex>' of the whole file (≤ 2 MiB) or of its first
    and last MiB."""
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


def _holds(path: Path, digest: str, full: bool) -> bool:
    """Whether the file still matches its recorded digest: by size, then (full, or a small file) by its bytes."""
    parts = digest.split(":")
    if len(parts) == 2:  # an old record: checked as it was made
        return path.is_file() and _edge_digest(path) == digest
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] not in hashlib.algorithms_available:
        return False  # an edited record, or one from a newer specscale that this Python cannot check: not trusted
    algorithm, size = parts[0], int(parts[1])
    if not path.is_file() or path.stat().st_size != size:
        return False
    if not full and size > SMALL:
        return True
    return _whole_file_digest(path, algorithm) == digest


def write_contents(run_dir: Path) -> None:
    """Record the digest of every file of a run about to be committed (called last before its _SUCCESS marker,
    which is not recorded: it is written after)."""
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name != CONTENTS_FILE)
    tmp = run_dir / f".{CONTENTS_FILE}.tmp"
    tmp.write_text(json.dumps({str(p.relative_to(run_dir)): file_digest(p) for p in files}, indent=1))
    os.replace(tmp, run_dir / CONTENTS_FILE)


def _record(run_dir: Path) -> dict[str, str] | None:
    """A run's contents record; None when it has none or it cannot be read as one."""
    try:
        record = json.loads((run_dir / CONTENTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def damaged_files(run_dir: Path, full: bool = False) -> list[str]:
    """Files of a finished run that are missing or differ from what was committed (relative paths; [] when it is
    intact). `full`: every file digested whole (a run about to be read as an input); otherwise the quick check
    (sizes, and small files whole). A run with no readable contents record is not trusted: [CONTENTS_FILE]."""
    record = _record(run_dir)
    if record is None:
        return [CONTENTS_FILE]
    return [rel for rel, digest in record.items() if not _holds(run_dir / rel, str(digest), full)]


def contents_digest(run_dir: Path, volatile: Collection[str]) -> str | None:
    """One digest of what a finished run holds, from its contents record, leaving out the `volatile` files (relative
    paths whose bytes differ between two runs that computed the same thing: provenance.json's times and run ids;
    _SUCCESS is never recorded). Equal for a run recomputed byte-identical; None without a record."""
    record = _record(run_dir)
    if record is None:
        return None
    kept = {rel: digest for rel, digest in record.items() if rel not in volatile}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def set_aside_if_damaged(runs_root: Path, stage: str, key: str, full: bool = False) -> str | None:
    """None for an intact finished run; else move it to the quarantine and return the warning that names the damaged
    files (or the missing contents record), where the run went and that it will be computed again. `full`: as in
    damaged_files."""
    run_dir = runs_root / stage / key
    bad = damaged_files(run_dir, full)
    if not bad:
        return None
    project = runs_root.parent
    if bad == [CONTENTS_FILE] and not (run_dir / CONTENTS_FILE).exists():
        what = (f"{run_dir.relative_to(project)} has no contents record ({CONTENTS_FILE}): what it held cannot be "
                "checked, so it is not trusted")
    else:
        what = ", ".join(str((run_dir / rel).relative_to(project)) for rel in bad[:3]) + (
            f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        what += " differ(s) from what was committed (damaged or edited)"
    aside = quarantine(runs_root, stage, key)
    return (f"[{stage}] WARNING: {what}: the run was moved to {aside.relative_to(project)} (kept; remove it when you "
            "no longer need it) and is computed again")


def quarantine(runs_root: Path, stage: str, key: str) -> Path:
    """Move runs/<stage>/<key> aside (same filesystem: one rename) and return where it went."""
    name = f"{key}-{time.strftime('%Y%m%dT%H%M%S')}"
    target = runs_root / QUARANTINE / stage / name
    n = 1
    while target.exists():  # set aside twice within a second (computed again, damaged again): keep both
        target, n = target.with_name(f"{name}-{n}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(runs_root / stage / key, target)
    return target
