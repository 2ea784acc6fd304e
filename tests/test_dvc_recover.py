"""`specscale recover`: a `dvc repro` killed inside DVC's own rewrite of `.dvc/tmp/rwlock` or `dvc.lock` leaves the
file torn, and every later `dvc repro` stops. Here the tear is made by hand (the fault matrix meets it by chance), on a
one-stage DVC project, and the whole round is run: DVC refuses, `specscale recover` sets the file aside, DVC goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specscale.store.recover import ProjectBusy, recover_torn_dvc_files, torn_dvc_files

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git + DVC project with one finished stage that counts how often its command ran (in runs.txt)."""
    root = tmp_path / "p"
    root.mkdir()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _run(cmd, root).returncode == 0
    (root / "dvc.yaml").write_text("stages:\n  count:\n    cmd: echo ran >> runs.txt && echo 42 > out.txt\n"
                                   "    outs: [out.txt]\n")
    out = _run(["dvc", "repro"], root)
    assert out.returncode == 0, out.stderr
    return root


def _specscale_recover(root: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "stages.cli", "recover"], root)


def test_sound_files_are_left_alone(project: Path) -> None:
    rwlock, lockfile = project / ".dvc" / "tmp" / "rwlock", project / "dvc.lock"
    before = (rwlock.read_bytes(), lockfile.read_bytes())
    assert torn_dvc_files(project) == []
    out = _specscale_recover(project)
    assert out.returncode == 0 and "nothing to recover" in out.stdout
    assert (rwlock.read_bytes(), lockfile.read_bytes()) == before


def test_an_empty_rwlock_stops_dvc_until_recovered(project: Path) -> None:
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    rwlock.write_bytes(b"")  # what a kill between DVC's open("w") and its close leaves
    out = _run(["dvc", "repro"], project)
    assert out.returncode != 0 and "Unable to read RWLock-file" in out.stderr
    [torn] = torn_dvc_files(project)
    assert torn.path == rwlock and "JSONDecodeError" in torn.reason
    out = _specscale_recover(project)
    assert out.returncode == 0, out.stderr
    assert "set aside .dvc/tmp/rwlock → .dvc/tmp/rwlock.torn-" in out.stdout
    [kept] = list((project / ".dvc" / "tmp").glob("rwlock.torn-*"))
    assert kept.read_bytes() == b""
    out = _run(["dvc", "repro"], project)
    assert out.returncode == 0, out.stderr
    assert (project / "runs.txt").read_text() == "ran\n"  # the stage was up to date: nothing ran again
    assert torn_dvc_files(project) == []


def test_a_cut_dvc_lock_stops_dvc_until_recovered(project: Path) -> None:
    lockfile = project / "dvc.lock"
    whole = lockfile.read_bytes()
    lockfile.write_bytes(whole[: len(whole) // 2])
    out = _run(["dvc", "repro"], project)
    assert out.returncode != 0 and "dvc.lock" in out.stderr
    [torn] = torn_dvc_files(project)
    assert torn.path == lockfile
    out = _specscale_recover(project)
    assert out.returncode == 0, out.stderr
    assert "set aside dvc.lock → dvc.lock.torn-" in out.stdout and "every stage command runs again" in out.stdout
    [kept] = list(project.glob("dvc.lock.torn-*"))
    assert kept.read_bytes() == whole[: len(whole) // 2]
    out = _run(["dvc", "repro"], project)
    assert out.returncode == 0, out.stderr
    assert (project / "runs.txt").read_text() == "ran\nran\n"  # without dvc.lock DVC runs the command again
    assert lockfile.read_bytes() == whole


def test_nothing_is_touched_while_dvc_holds_the_project(project: Path) -> None:
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    rwlock.write_bytes(b"{")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dvc.lock import make_lock; "
         "lock = make_lock(sys.argv[1]); lock.lock(); print('held', flush=True); time.sleep(60)",
         str(project / ".dvc" / "tmp" / "lock")], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ProjectBusy, match=r"\.dvc/tmp/lock"):
            recover_torn_dvc_files(project)
        assert time.monotonic() - started < 30
        assert rwlock.read_bytes() == b"{"
        out = _specscale_recover(project)
        assert out.returncode == 1 and "a DVC process holds" in out.stderr
    finally:
        holder.kill()
        holder.wait()
    [(torn, _)] = recover_torn_dvc_files(project)  # the holder is gone: now it is set aside
    assert torn.path == rwlock and not rwlock.exists()


def test_outside_a_dvc_project_it_says_so(tmp_path: Path) -> None:
    out = _specscale_recover(tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"specscale recover: {tmp_path.resolve()} is not a DVC project (no .dvc/): run it "
                                  "where you run `dvc repro`")
