"""Collaborators sharing runs through a DVC remote, on the smoke preset (AdamW × 3 widths), for a local-directory
remote and an S3 remote (moto's server on 127.0.0.1, started here; credentials only in the environment of the dvc
commands, never in the repository):

- A reproduces, commits dvc.lock and pushes; B clones, pulls, and `dvc repro` computes nothing.
- C clones and adds a width without pulling: the stages restore the pushed runs and compute only the new width.
- D pulls one spectra run and gets neither checkpoints nor any other run.
- An unreachable remote or wrong credentials fail with a clear error and lose nothing local.

End-to-end and a few minutes long, hence marked `slow`: `python -m pytest -m slow tests/test_remote.py`.
The S3 variants skip when dvc-s3 or moto[server] are not installed (`pip install "dvc-s3" "moto[server]"`).
Byte counts of the remote and of what was pulled are printed (`pytest -s`).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import (du, file_listing, finished, free_port, git_commit, make_smoke_project, run, smoke_params,
                     write_params)

pytestmark = pytest.mark.slow

BUCKET = "specscale-test"
S3_MISSING = [m for m in ("dvc_s3", "moto", "boto3", "flask") if importlib.util.find_spec(m) is None]
S3_SKIP = pytest.mark.skipif(bool(S3_MISSING), reason=f"S3 remote tests need dvc-s3 and moto[server] "
                                                       f"(missing: {', '.join(S3_MISSING)})")
# dummy credentials, for moto only; the S3 variants pass them to dvc through the environment
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


@dataclass
class Remote:
    kind: str
    url: str
    endpoint: str | None = None  # S3: the moto server, a machine-local setting (config.local)
    env: dict[str, str] = field(default_factory=dict)
    size: Callable[[], int] = lambda: 0  # bytes stored in the remote

    def add(self, project: Path, name: str = "store", local: bool = False) -> None:
        """Make this the default remote of `project`: in .dvc/config (committed with it), or with `local` in
        .dvc/config.local (this machine only, overriding the committed one)."""
        level = ["--local"] if local else []
        run(["dvc", "remote", "add", "--force", *level, "-d", name, self.url], project)
        if local and self.endpoint:
            run(["dvc", "remote", "modify", "--local", name, "endpointurl", self.endpoint], project)
        else:
            self.configure_local(project, name)

    def configure_local(self, project: Path, name: str = "store") -> None:
        """What a collaborator sets on their machine after cloning: the endpoint, never in git."""
        if self.endpoint:
            run(["dvc", "remote", "modify", "--local", name, "endpointurl", self.endpoint], project)

    def dvc(self, args: list[str], project: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        return run(["dvc", *args], project, check=check, env={**self.env, **env})


@contextmanager
def moto_server(require_auth: bool = False) -> Iterator[str]:
    """moto's S3 on 127.0.0.1 with the test bucket; with `require_auth`, every request after the bucket's creation
    must carry credentials of an IAM user (there are none, so every key is wrong)."""
    import boto3

    port = free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "1"} if require_auth else {})}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:  # a TCP connect, not a request: with require_auth only one request is free
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server on port {port} did not start")
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _bucket_bytes(endpoint: str) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        total += sum(obj["Size"] for obj in page.get("Contents", []))
    return total


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=S3_SKIP)])
def remote(request, tmp_path_factory) -> Iterator[Remote]:
    if request.param == "local":
        path = tmp_path_factory.mktemp("remote") / "store"
        yield Remote("local", str(path), size=lambda: du(path))
    else:
        with moto_server() as endpoint:
            yield Remote("s3", f"s3://{BUCKET}/cache", endpoint, dict(S3_ENV), size=lambda: _bucket_bytes(endpoint))


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A's project: reproduced once, dvc.lock committed. Shared by both remotes (a remote is only config)."""
    root = make_smoke_project(tmp_path_factory.mktemp("a") / "project", smoke_params())
    started = time.time()
    run(["dvc", "repro"], root)
    print(f"\nA's first repro: {time.time() - started:.0f}s")
    git_commit(root, "smoke results")
    return root


@pytest.fixture(scope="module")
def pushed(origin: Path, remote: Remote) -> Remote:
    """A makes `remote` the project's default, commits that, and pushes every stage output."""
    remote.add(origin)
    git_commit(origin, f"remote {remote.kind}")
    out = remote.dvc(["push"], origin)
    print(f"\n[{remote.kind}] A pushed: {out.stdout.strip().splitlines()[-1]}; remote holds {remote.size():,} bytes "
          f"(A's runs/: {du(origin / 'runs'):,} bytes)")
    return remote


def _clone(origin: Path, dest: Path, remote: Remote) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent)
    remote.configure_local(dest)
    return dest


def _contents(project: Path) -> dict[str, int]:
    """Every file of every run with its size (mtimes differ between machines)."""
    return {name: size for name, (size, _) in file_listing(project / "runs").items() if not name.startswith(".")}


def test_fresh_clone_pulls_everything_and_computes_nothing(origin: Path, pushed: Remote, tmp_path: Path) -> None:
    b = _clone(origin, tmp_path / "b", pushed)
    started = time.time()
    pushed.dvc(["pull"], b)
    print(f"\n[{pushed.kind}] B pulled {du(b / '.dvc/cache'):,} bytes into its cache in {time.time() - started:.1f}s")
    assert _contents(b) == _contents(origin)
    again = pushed.dvc(["repro"], b)
    assert "Data and pipelines are up to date" in again.stdout, again.stdout[-3000:]
    assert run(["git", "status", "--porcelain"], b).stdout == "", "nothing changed in B's repository"


def test_new_width_in_a_fresh_clone_computes_only_that_width(origin: Path, pushed: Remote, tmp_path: Path) -> None:
    c = _clone(origin, tmp_path / "c", pushed)  # no pull: the stages restore what they need
    write_params(c, smoke_params(widths=[1, 2, 3, 4]))
    out = pushed.dvc(["repro"], c).stdout
    for stage in ("tokenize", "buckets"):
        assert f"[{stage}] 1 runs: 1 cached, 0 to compute" in out, out[-4000:]
    for stage in ("train", "activations", "spectra"):
        assert f"[{stage}] restored 3 of 4 missing runs" in out, out[-4000:]
        assert f"[{stage}] 4 runs: 3 cached, 1 to compute" in out, out[-4000:]
        assert len(finished(c, stage)) == 4
    # the restored runs are A's, byte for byte
    a_runs = _contents(origin)
    assert {k: v for k, v in _contents(c).items() if k in a_runs} == a_runs


def test_pull_one_run_without_checkpoints(origin: Path, pushed: Remote, tmp_path: Path) -> None:
    d = _clone(origin, tmp_path / "d", pushed)
    key = sorted(finished(origin, "spectra"))[0]
    pushed.dvc(["pull", f"runs/spectra/{key}"], d)
    assert finished(d, "spectra") == {key}
    assert (d / "runs/spectra" / key / "ranks.csv").read_bytes() == (origin / "runs/spectra" / key / "ranks.csv").read_bytes()
    assert not (d / "runs/train").exists() and not list(d.rglob("*.pt")), "no checkpoints fetched"
    fetched = du(d / ".dvc/cache")
    print(f"\n[{pushed.kind}] one spectra run: {fetched:,} bytes fetched (full pull: {du(origin / 'runs'):,})")
    assert fetched < du(origin / "runs/train") / 2


def _bad_remotes(remote: Remote, tmp_path: Path) -> Iterator[tuple[str, Remote]]:
    """Remotes that cannot be read, each with what the user should see."""
    if remote.kind == "local":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file where the share should be mounted")
        yield "unreachable", Remote("local", str(blocker / "store"))
    else:
        # one attempt instead of botocore's retries with back-off (≈ 30 s per command): same error, sooner
        yield "unreachable", Remote("s3", remote.url, f"http://127.0.0.1:{free_port()}",
                                    {**S3_ENV, "AWS_MAX_ATTEMPTS": "1"})
        with moto_server(require_auth=True) as endpoint:
            yield "wrong credentials", Remote("s3", remote.url, endpoint, dict(S3_ENV))


def test_unreachable_remote_or_wrong_credentials_fail_clearly_and_lose_nothing(
        origin: Path, pushed: Remote, tmp_path: Path) -> None:
    b = _clone(origin, tmp_path / "b", pushed)
    pushed.dvc(["pull"], b)
    write_params(b, smoke_params(widths=[1, 2, 3, 4]))  # a local edit that must survive too
    before = file_listing(b / "runs"), (b / "params.yaml").read_text()
    for what, bad in _bad_remotes(pushed, tmp_path):
        # B pushes to the broken remote: a clear error, B's runs and edits as they were
        bad.add(b, "store", local=True)
        started = time.time()
        push = bad.dvc(["push"], b, check=False)
        print(f"\n[{pushed.kind}] {what}: push rc {push.returncode} after {time.time() - started:.1f}s: "
              f"{push.stderr.strip().splitlines()[0][:200]}")
        assert push.returncode != 0 and "ERROR" in push.stderr
        assert any(word in push.stderr for word in REASONS), push.stderr
        assert (file_listing(b / "runs"), (b / "params.yaml").read_text()) == before
        # E clones with the broken remote: pull fails clearly, and `dvc repro` stops at the first stage with the
        # reason instead of silently recomputing everything
        e = _clone(origin, tmp_path / f"e-{what.replace(' ', '-')}", pushed)
        bad.add(e, "store", local=True)
        pull = bad.dvc(["pull"], e, check=False)
        assert pull.returncode != 0 and "ERROR" in pull.stderr, pull.stdout + pull.stderr
        repro = bad.dvc(["repro"], e, check=False)
        print(f"[{pushed.kind}] {what}: repro in a fresh clone: {repro.stderr.strip().splitlines()[-1][:200]}")
        assert repro.returncode != 0
        assert ("[tokenize] could not restore runs/tokenize from the DVC remote 'store'" in repro.stderr
                or "[tokenize] the DVC remote 'store' is the directory" in repro.stderr), repro.stderr[-3000:]
        assert "SPECSCALE_RESTORE=0" in repro.stderr
        assert not (e / "runs/tokenize").exists() and "to compute" not in repro.stdout
        assert run(["git", "status", "--porcelain"], e).stdout == ""


REASONS = ("connect", "Forbidden", "Access Key", "credentials", "Not a directory", "not a directory")
