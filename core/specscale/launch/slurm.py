"""Where SLURM jobs stand, read from `squeue` (one call per poll for every watched job).

submitit tracks SLURM jobs through `sacct`, which needs the accounting daemon (slurmdbd); many small clusters, and
the single-node test cluster, have none, and a job that dies without writing its result (scancel, node failure)
would then look unfinished forever. `squeue` always answers: a job it lists is queued or running, a job it no longer
lists has ended (the run's _SUCCESS marker says whether it succeeded).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Iterable

ENDED = "ENDED"  # not listed by squeue: finished, failed, cancelled or purged
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD"})


class SlurmQueue:
    """Caches one `squeue` answer for `max_age_s` so that polling N jobs costs one call, not N."""

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self.watched: set[str] = set()
        self._states: dict[str, str] | None = {}
        self._asked: frozenset[str] = frozenset()
        self._at = float("-inf")
        self._warned_at = float("-inf")

    def state(self, job_id: str) -> str | None:
        """The job's squeue state (PENDING, RUNNING, ...), ENDED, or None when squeue did not answer: the caller
        must then assume the job is still alive, never that it ended."""
        job_id = str(job_id)
        self.watched.add(job_id)
        if job_id not in self._asked or time.monotonic() - self._at > self.max_age_s:
            self._refresh()
        if self._states is None:
            return None
        return self._states.get(job_id, ENDED)

    def _refresh(self) -> None:
        self._asked = frozenset(self.watched)
        self._at = time.monotonic()
        self._states = query(self._asked)
        if self._states is None and self._at - self._warned_at > 300:
            print("warning: squeue does not answer; treating SLURM jobs as still in flight", file=sys.stderr)
            self._warned_at = self._at


def query(job_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, str] | None:
    """{job id: state} for the listed jobs still in the queue (array tasks as `<array>_<task>`); None on failure."""
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return {}
    # -r: one line per array task, so pending tasks are not folded into `123_[4-7]`
    cmd = ["squeue", "--noheader", "--array", "--format=%i|%T", f"--jobs={','.join(ids)}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue exits 1 when none of the ids is known any more: they all ended (and were purged)
        return {} if "Invalid job id" in out.stderr else None
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.strip()
    return states


QUEUE = SlurmQueue()  # shared by every launcher and `specscale status` in this process
