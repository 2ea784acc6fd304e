"""The launcher: only missing runs compute, failures are gathered (never stop the others), finished runs stay,
and a restarted launcher re-attaches to a live local job instead of submitting it again.

The stage under test is a fake: `run_one` writes a file, can wait or sleep, and raises for specs marked `fail`. The
launcher is handed that function, as the stage table hands it a real stage's entry point. In-process (`debug`) it
comes from a module object; for real submitit subprocesses (`local`) from a module file on PYTHONPATH, which the
children import when they unpickle the function.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from specscale.store.runs import PROVENANCE_FILE, SUCCESS, RunStore, read_json
from specscale.launch.launcher import Launcher, Task, make_executor, run_task
from specscale.study.spec import LauncherSpec

FAKE_STAGE = '''
import importlib
import json
import os
import time
from pathlib import Path


def run_one(spec, work, store):
    start = time.time()
    print(f"hello from {spec['name']}", flush=True)
    if spec.get("wait_for"):
        deadline = time.time() + 30
        while not Path(spec["wait_for"]).exists() and time.time() < deadline:
            time.sleep(0.05)
    time.sleep(spec.get("sleep", 0))
    if spec.get("fail"):
        raise RuntimeError(f"planned failure of {spec['name']}")
    (work / "out.json").write_text(json.dumps({"name": spec["name"], "start": start, "end": time.time(),
                                               "pid": os.getpid()}))
    return {"answer": 42}
'''

ENTRY: dict = {}  # fake stage name → its run_one, filled by the fixtures


def _launcher_cfg(cluster: str, **overrides):
    cfg = OmegaConf.structured(LauncherSpec)
    cfg.cluster = cluster
    cfg.poll_seconds = 0.1
    cfg.timeout_min = 2
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _tasks(specs: list[dict]) -> list[Task]:
    return [Task(key=f"key{s['name']}", label=f"run {s['name']}", spec=s) for s in specs]


class Echo(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)

    def text(self) -> str:
        return "\n".join(self)


# --- debug (in-process) --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_debug_stage(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("fake_stage_debug")
    exec(FAKE_STAGE, module.__dict__)
    monkeypatch.setitem(sys.modules, "fake_stage_debug", module)
    monkeypatch.setitem(ENTRY, "fake", module.run_one)
    return module


def test_debug_failures_are_gathered_and_others_finish(tmp_path: Path, fake_debug_stage, capsys) -> None:
    store = RunStore(tmp_path)
    tasks = _tasks([{"name": "a", "fail": True}, {"name": "b"}, {"name": "c"}])  # the failure comes first
    echo = Echo()
    report = Launcher("fake", ENTRY["fake"], store, _launcher_cfg("debug"), echo=echo).run(tasks)

    assert report.total == 3 and report.cached == []
    assert report.computed == ["keyb", "keyc"]
    assert report.exit_code == 1
    assert len(report.failed) == 1
    key, label, log = report.failed[0]
    assert (key, label) == ("keya", "run a")
    assert Path(log) == store.work_dir("fake", "keya") / "error.log" and Path(log).exists()
    assert "RuntimeError: planned failure of a" in Path(log).read_text()
    # The failure is listed on stderr with its key and log; finished runs are kept.
    err = capsys.readouterr().err
    assert "FAILED runs" in err and "run a" in err and "key=keya" in err and f"log={log}" in err
    assert not store.is_done("fake", "keya") and not store.final_dir("fake", "keya").exists()
    for name in ("b", "c"):
        final = store.final_dir("fake", f"key{name}")
        assert store.is_done("fake", f"key{name}")
        assert json.loads((final / "out.json").read_text())["name"] == name
        assert read_json(final / PROVENANCE_FILE)["answer"] == 42
        assert read_json(final / "spec.json") == {"name": name}
    assert "summary: 2 computed, 0 cached, 1 failed" in echo.text()

    # A second launch computes nothing that is finished; only the failure is tried again.
    mtimes = {n: (store.final_dir("fake", f"key{n}") / SUCCESS).stat().st_mtime_ns for n in ("b", "c")}
    calls = []
    original = fake_debug_stage.run_one
    counted = lambda spec, work, st: calls.append(spec["name"]) or original(spec, work, st)  # noqa: E731
    report2 = Launcher("fake", counted, store, _launcher_cfg("debug"), echo=Echo()).run(tasks)
    assert sorted(report2.cached) == ["keyb", "keyc"] and report2.computed == []
    assert [f[0] for f in report2.failed] == ["keya"] and calls == ["a"]
    assert mtimes == {n: (store.final_dir("fake", f"key{n}") / SUCCESS).stat().st_mtime_ns for n in ("b", "c")}

    # Without the failing task: all cached, nothing runs, exit 0.
    calls.clear()
    report3 = Launcher("fake", counted, store, _launcher_cfg("debug"), echo=Echo()).run(tasks[1:])
    assert sorted(report3.cached) == ["keyb", "keyc"] and report3.computed == [] and report3.failed == []
    assert report3.exit_code == 0 and calls == []
    assert read_json(store.root / ".jobs" / "fake.json") == {}


def test_run_task_commits_atomically(tmp_path: Path, fake_debug_stage) -> None:
    store = RunStore(tmp_path)
    store.begin("fake", "k", {"name": "x"})
    assert run_task(ENTRY["fake"], "fake", "k", str(tmp_path)) == "k"
    assert store.is_done("fake", "k") and not store.work_dir("fake", "k").exists()
    store.begin("fake", "bad", {"name": "y", "fail": True})
    with pytest.raises(RuntimeError, match="planned failure of y"):
        run_task(ENTRY["fake"], "fake", "bad", str(tmp_path))
    assert not store.final_dir("fake", "bad").exists() and store.work_dir("fake", "bad").is_dir()


def test_a_launch_on_a_full_disk_still_lists_its_failures(tmp_path: Path, fake_debug_stage, monkeypatch,
                                                          capsys) -> None:
    """The run fails, then the launcher's own writes (the run's error.log, the job records) fail with ENOSPC: the
    launch still ends with the failed run, the files it could not write and that the disk is full, no traceback of
    its own."""
    import errno

    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "error.log":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    def no_records(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    monkeypatch.setattr("specscale.launch.launcher.write_json", no_records)
    store = RunStore(tmp_path)
    echo = Echo()
    report = Launcher("fake", ENTRY["fake"], store, _launcher_cfg("debug"), echo=echo).run(
        _tasks([{"name": "a", "fail": True}, {"name": "b"}]))
    log = store.work_dir("fake", "keya") / "error.log"
    assert report.computed == ["keyb"] and [(k, shown) for k, _, shown in report.failed] == [
        ("keya", f"{log} (could not be written)")]
    err = capsys.readouterr().err
    assert "FAILED runs" in err and "key=keya" in err
    assert f"could not write {log}: No space left on device (the disk is full" in err
    assert f"could not write {store.jobs_path('fake')}: No space left on device (the disk is full" in err
    assert "summary: 1 computed, 0 cached, 1 failed" in echo.text()


def test_a_damaged_input_is_set_aside_and_computed_again_before_it_is_read(tmp_path: Path, fake_debug_stage) -> None:
    """A run about to be read as an input is checked in full: a byte flipped in the middle of a 3 MiB file (same
    size: the quick check cannot see it) sets it aside, named, and its stage is run again before the reader runs."""
    store = RunStore(tmp_path)

    def compute_up() -> int:
        (store.begin("up", "u", {"n": 1}) / "big.bin").write_bytes(b"a" * (3 << 20))
        store.commit("up", "u", "cpu", 0.0)
        return 0

    compute_up()
    big = store.final_dir("up", "u") / "big.bin"
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0x01
    big.write_bytes(bytes(data))
    rebuilt: list[str] = []
    echo = Echo()
    tasks = _tasks([{"name": "a", "inputs": {"up": "u"}}])
    report = Launcher("fake", ENTRY["fake"], store, _launcher_cfg("debug"), echo=echo,
                      rebuild=lambda stage: rebuilt.append(stage) or compute_up()).run(tasks)
    assert rebuilt == ["up"] and report.computed == ["keya"] and report.failed == []
    assert "runs/up/u/big.bin differ(s) from what was committed" in echo.text()
    assert (store.final_dir("up", "u") / "big.bin").read_bytes() == b"a" * (3 << 20)
    assert len(list((store.root / ".quarantine" / "up").iterdir())) == 1

    # without a way to compute it again, the reader fails naming the input it lacks, and never runs on it
    big.write_bytes(bytes(data))
    report = Launcher("fake", ENTRY["fake"], store, _launcher_cfg("debug"), echo=Echo()).run(
        _tasks([{"name": "b", "inputs": {"up": "u"}}]))
    assert report.computed == [] and [k for k, _, _ in report.failed] == ["keyb"]
    log = store.work_dir("fake", "keyb") / "error.log"
    assert "input run runs/up/u is not finished" in log.read_text()
    assert not (store.work_dir("fake", "keyb") / "out.json").exists()


def test_check_inputs_follows_inputs_upstream_and_rebuilds_upstream_first(tmp_path: Path) -> None:
    """A measurement reads a train run and the buckets run and, through them, the tokenize run: each is checked in
    full once, however many readers read it; when tokenize and train are both damaged, tokenize is computed again
    first (the train run's recomputation reads it). An aggregate (transitive=False) checks only what it reads."""
    from specscale.launch.inputs import check_inputs

    store = RunStore(tmp_path)
    inputs = {"tok": {}, "tr": {"tokenize": "tok"}, "bu": {"tokenize": "tok"}}
    stages = {"tok": "tokenize", "tr": "train", "bu": "buckets"}

    def commit(key: str) -> int:
        (store.begin(stages[key], key, {"inputs": inputs[key]}) / "big.bin").write_bytes(b"a" * (3 << 20))
        store.commit(stages[key], key, "cpu", 0.0)
        return 0

    for key in ("tok", "tr", "bu"):
        commit(key)
    for key in ("tok", "tr"):
        big = store.final_dir(stages[key], key) / "big.bin"
        big.write_bytes(b"a" * (1 << 20) + b"b" + b"a" * ((2 << 20) - 1))  # same size, one byte changed
    order: list[str] = []
    echo = Echo()
    reads = [("train", "tr"), ("buckets", "bu")]
    lacking = check_inputs(store, "spectra", {"s1": reads, "s2": reads},
                           lambda stage: order.append(stage) or commit({"tokenize": "tok", "train": "tr"}[stage]),
                           echo)
    assert lacking == {} and order == ["tokenize", "train"]
    for key in ("tok", "tr"):
        assert echo.text().count(f"runs/{stages[key]}/{key}/big.bin differ(s)") == 1
    assert "runs/buckets" not in echo.text()

    (store.final_dir("tokenize", "tok") / "big.bin").write_bytes(b"b" * (3 << 20))
    assert check_inputs(store, "fit", {"fit": [("train", "tr")]}, None, echo, transitive=False) == {}
    assert check_inputs(store, "spectra", {"s1": [("train", "tr")]}, None, echo) == {"s1": [("tokenize", "tok")]}


def test_make_executor_names_the_cluster(tmp_path: Path) -> None:
    import submitit

    for cluster, cls in (("local", submitit.LocalExecutor), ("debug", submitit.DebugExecutor)):
        executor = make_executor(_launcher_cfg(cluster), tmp_path / cluster, "fake")
        assert isinstance(executor._executor, cls)
        assert executor.cluster == cluster


# --- local (real submitit subprocesses) ----------------------------------------------------------------------------


@pytest.fixture
def fake_local_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stage named `fakelocal` whose run_one lives in a module file that child processes can import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_stage_local.py").write_text(textwrap.dedent(FAKE_STAGE))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(site) + (os.pathsep + old if old else ""))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "fake_stage_local", raising=False)
    module = importlib.import_module("fake_stage_local")
    monkeypatch.setitem(ENTRY, "fakelocal", module.run_one)
    return "fakelocal"


def test_local_max_parallel_1_and_failures_with_submitit_log(tmp_path: Path, fake_local_stage: str) -> None:
    stage = fake_local_stage
    root = tmp_path / "proj"
    store = RunStore(root)
    tasks = _tasks([{"name": "a"}, {"name": "b", "fail": True}, {"name": "c"}])
    echo = Echo()
    report = Launcher(stage, ENTRY[stage], store, _launcher_cfg("local", max_parallel=1), echo=echo).run(tasks)

    assert report.computed == ["keya", "keyc"], echo.text()
    assert report.exit_code == 1 and len(report.failed) == 1
    key, label, log = report.failed[0]
    assert (key, label) == ("keyb", "run b")
    log = Path(log)
    assert log.parent == store.root / ".submitit" / stage and log.name.endswith("_0_log.err") and log.exists()
    assert "RuntimeError: planned failure of b" in log.read_text()
    outs = [json.loads((store.final_dir(stage, f"key{n}") / "out.json").read_text()) for n in ("a", "c")]
    assert outs[0]["pid"] != outs[1]["pid"] != os.getpid()  # separate processes
    assert outs[0]["end"] <= outs[1]["start"]  # max_parallel=1: one after another
    assert "    run a: hello from a" in echo  # the job's stdout is relayed with its label
    assert read_json(store.final_dir(stage, "keya") / PROVENANCE_FILE)["answer"] == 42
    records = read_json(store.root / ".jobs" / f"{stage}.json")
    assert "keya" not in records and "keyc" not in records  # finished runs' job records are dropped

    report2 = Launcher(stage, ENTRY[stage], store, _launcher_cfg("local", max_parallel=1), echo=Echo()).run([tasks[0], tasks[2]])
    assert sorted(report2.cached) == ["keya", "keyc"] and report2.computed == [] and report2.failed == []


def test_local_relaunch_reattaches_to_a_live_job(tmp_path: Path, fake_local_stage: str) -> None:
    stage = fake_local_stage
    root = tmp_path / "proj"
    store = RunStore(root)
    go = tmp_path / "go"
    (task,) = _tasks([{"name": "r", "wait_for": str(go), "sleep": 0.2}])
    cfg = _launcher_cfg("local", max_parallel=1)

    # An earlier launcher submitted the job, recorded it and died; its controller lives on.
    first = Launcher(stage, ENTRY[stage], store, cfg, echo=Echo())
    store.begin(stage, task.key, task.spec)
    first.folder.mkdir(parents=True, exist_ok=True)
    job = make_executor(cfg, first.folder, stage).submit(run_task, ENTRY[stage], stage, task.key, str(store.project_root))
    first.jobs_path.parent.mkdir(parents=True, exist_ok=True)
    first.jobs_path.write_text(json.dumps({task.key: {"cluster": "local", "job_id": str(job.job_id),
                                                      "folder": str(first.folder), "submitted_at": time.time()}}))
    try:
        def echo(msg: str) -> None:
            messages.append(msg)
            if "re-attached" in msg:
                go.touch()  # let the job finish only once the new launcher has attached to it

        messages: list[str] = []
        deadline = time.time() + 20  # the job is live: its controller process must be up
        while not (Path(f"/proc/{job.job_id}/cmdline").exists() and
                   b"submitit.local._local" in Path(f"/proc/{job.job_id}/cmdline").read_bytes()):
            assert time.time() < deadline
            time.sleep(0.05)
        report = Launcher(stage, ENTRY[stage], store, cfg, echo=echo).run([task])
    finally:
        go.touch()
        job.wait()

    text = "\n".join(messages)
    assert f"re-attached to job {job.job_id} (run r)" in text, text
    assert not any("▶" in m for m in messages), text  # nothing submitted
    assert report.computed == [task.key] and report.failed == [] and report.cached == []
    assert store.is_done(stage, task.key)
    out = json.loads((store.final_dir(stage, task.key) / "out.json").read_text())
    assert out["name"] == "r"
    # Exactly one job ever ran: one set of submitit files, and the job's own log is the one that was streamed.
    logs = sorted(p.name for p in first.folder.glob("*_0_log.out"))
    assert logs == [f"{job.job_id}_0_log.out"]
    assert read_json(first.jobs_path) == {}
    assert "    run r: hello from r" in messages


def test_dead_job_record_is_resubmitted(tmp_path: Path, fake_local_stage: str) -> None:
    """A record whose controller is gone (here: a pid that is not a submitit controller) is submitted anew."""
    stage = fake_local_stage
    store = RunStore(tmp_path / "proj")
    (task,) = _tasks([{"name": "d"}])
    cfg = _launcher_cfg("local")
    launcher = Launcher(stage, ENTRY[stage], store, cfg, echo=Echo())
    launcher.jobs_path.parent.mkdir(parents=True, exist_ok=True)
    launcher.jobs_path.write_text(json.dumps({task.key: {"cluster": "local", "job_id": str(os.getpid()),
                                                         "folder": str(launcher.folder), "submitted_at": 0}}))
    report = launcher.run([task])
    assert not any("re-attached" in m for m in launcher.echo)
    assert any("▶ run d (job " in m for m in launcher.echo)
    assert report.computed == [task.key] and store.is_done(stage, task.key)
