"""One training run: a run SIGKILLed mid-way and resumed equals an uninterrupted one bit for bit; divergence is a
result, not a crash; the kept checkpoints and the LR schedule are the documented ones."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import make_project, write_tokens_dir
from stages.runner import plan_study
from specscale.study.spec import load_study
from specscale.train.train import RESUME_FILE, Trainer, lr_factor, train_run
from specscale.model.build import build_model, kept_checkpoints, logged_steps, model_shape

VOCAB = 64
# d_model 32, 2 layers, 40 steps of 8 × 64 tokens, log every 10, keep 2, resume every 10 (spelt out over smoke).
PARAMS = ("preset: smoke\nmodel: {d_model: 32, n_layers: 2, n_heads: 2, pos_encoding: rope, postln_fraction: 0.0}\n"
          "train: {device: cpu, val_tokens: 2048, steps: 40, batch_size: 8, micro_batch_size: 0, seq_len: 64,\n"
          "        log_every: 10, keep_checkpoints: 2, keep_all_checkpoints: false, resume_every: 10,\n"
          "        decay_fraction: 0.2, early_stop_loss_ratio: 0.0, diverged_ppl: 1000.0, precision: fp32}\n"
          "sweep: {optimizers: [OPT], widths: [2], seeds: [0]}\n")

CHILD = '''
import json, sys, time
from pathlib import Path

import specscale.train.train as tr

spec = json.loads(Path(sys.argv[1]).read_text())
delay = float(sys.argv[4])
step = tr.Trainer.step


def slow_step(self, i):  # slow enough for the parent to kill it mid-run; the arithmetic is untouched
    time.sleep(delay)
    return step(self, i)


tr.Trainer.step = slow_step
tr.train_run(spec, Path(sys.argv[2]), Path(sys.argv[3]), threads=1, resume_every=int(sys.argv[5]))
print("FINISHED", flush=True)
'''


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _spec(root: Path, optimizer: str = "muon", extra: str = "") -> dict:
    params = make_project(root, PARAMS.replace("OPT", optimizer) + extra)
    plan = plan_study(load_study(params), params)
    assert len(plan.train) == 1
    return plan.train[0].spec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    tokens = write_tokens_dir(root / "tokens", vocab_size=VOCAB)
    spec = _spec(root / "project")
    straight = root / "straight"
    straight.mkdir()
    result = train_run(spec, straight, tokens, threads=1, resume_every=10)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return {"root": root, "tokens": tokens, "spec": spec, "straight": straight, "result": result}


def _log(work: Path) -> list[tuple[int, float, float]]:
    lines = (work / "log.jsonl").read_text().split("\n")
    assert lines[-1] == ""  # every line complete
    return [(e["step"], e["loss"], e["lr_factor"]) for e in map(json.loads, lines[:-1])]


def _ckpts(work: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted((work / "ckpt").glob("step_*.pt"))}


def _killed_then_resumed(setup, tmp_path: Path, kill_when, expect_resume_state: bool = True,
                         damage=None) -> Path:
    """Run in a subprocess, SIGKILL it once `kill_when(work)` holds, then resume in this process (after
    `damage(work)`, when given)."""
    work = tmp_path / "work"
    work.mkdir()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(setup["spec"]))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [str(spec_file), str(work), str(setup["tokens"]), "0.05", "10"]  # 0.05 s sleep per step, resume every 10
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 60
        while not kill_when(work):
            assert proc.poll() is None, f"child ended before the kill point:\n{proc.stdout.read()}"
            assert time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert "FINISHED" not in proc.stdout.read()
    assert not (work / "result.json").exists()  # it really was interrupted
    assert (work / RESUME_FILE).exists() == expect_resume_state  # the kill landed where the test meant it to
    if damage is not None:
        damage(work)
    result = train_run(setup["spec"], work, setup["tokens"], threads=1, resume_every=10)
    assert result["steps_done"] == 40 and not result["diverged"]
    return work


def _assert_same_as_straight(setup, work: Path) -> None:
    straight = setup["straight"]
    a, b = _ckpts(straight), _ckpts(work)
    assert list(a) == list(b) == ["step_000000.pt", "step_000030.pt", "step_000040.pt"]
    for name in a:
        assert a[name].keys() == b[name].keys()
        for param in a[name]:
            assert torch.equal(a[name][param], b[name][param]), (name, param)
    assert _log(work) == _log(straight)
    res_a = json.loads((straight / "result.json").read_text())
    res_b = json.loads((work / "result.json").read_text())
    assert res_a == res_b


def test_straight_run(setup) -> None:
    result, straight = setup["result"], setup["straight"]
    assert result["steps_done"] == 40 and result["tokens_seen"] == 40 * 8 * 64
    assert not result["diverged"] and result["diverged_reason"] is None
    assert result["checkpoints"] == [0, 30, 40]
    assert math.isfinite(result["val_loss"]) and result["val_ppl"] == pytest.approx(math.exp(result["val_loss"]))
    assert result["device"] == "cpu" and result["vocab_size"] == 64 and result["ffn_dim"] == 64
    assert (straight / RESUME_FILE).exists()  # the last resume point stays until the stage drops it at commit
    assert torch.load(straight / RESUME_FILE, weights_only=False)["step"] == 30
    steps = [s for s, _, _ in _log(straight)]
    assert steps == [1, 10, 20, 30, 40]
    losses = [loss for _, loss, _ in _log(straight)]
    assert losses[-1] < losses[0]  # it learns the synthetic pattern
    # step 0's checkpoint is the initialisation, a function of the seed alone
    init = build_model(setup["spec"], VOCAB, torch.device("cpu")).state_dict()
    ckpt0 = torch.load(straight / "ckpt" / "step_000000.pt", weights_only=True)
    assert all(torch.equal(init[k], ckpt0[k]) for k in init)


def test_sigkill_after_a_resume_point_then_resume_is_identical(setup, tmp_path: Path) -> None:
    work = _killed_then_resumed(setup, tmp_path, lambda w: (w / RESUME_FILE).exists())
    _assert_same_as_straight(setup, work)


@pytest.mark.slow
def test_sigkill_late_then_resume_is_identical(setup, tmp_path: Path) -> None:
    """Killed after the step-30 checkpoint: resume from step 30 keeps the files the dead run already wrote."""
    work = _killed_then_resumed(setup, tmp_path, lambda w: (w / "ckpt" / "step_000030.pt").exists())
    _assert_same_as_straight(setup, work)


def test_sigkill_before_any_resume_point_restarts_cleanly(setup, tmp_path: Path) -> None:
    """Killed after step 1 was logged but before the first resume point: the restart must not duplicate log lines."""
    work = _killed_then_resumed(setup, tmp_path,
                                lambda w: (w / "log.jsonl").exists() and (w / "log.jsonl").stat().st_size > 0,
                                expect_resume_state=False)
    _assert_same_as_straight(setup, work)


def test_a_torn_last_log_line_is_dropped_on_resume(setup, tmp_path: Path, capsys) -> None:
    """A write cut short (a full disk, a kill mid-line) leaves half a record at the end of log.jsonl: the resumed
    run drops it with one warning and ends identical to an uninterrupted one."""
    def tear(work: Path) -> None:
        with (work / "log.jsonl").open("ab") as fh:
            fh.write(b'{"step": 20, "loss": 4.')  # no newline: the record was never finished

    work = _killed_then_resumed(setup, tmp_path, lambda w: (w / RESUME_FILE).exists(), damage=tear)
    _assert_same_as_straight(setup, work)
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if "torn" in ln]
    assert len(warnings) == 1 and str(work / "log.jsonl") in warnings[0] and "23 bytes" in warnings[0]


def test_a_torn_validation_log_keeps_its_complete_records(tmp_path: Path, capsys) -> None:
    from specscale.train.train import _logged_steps_in, _truncate_log

    log = tmp_path / "val_log.jsonl"
    complete = b'{"step": 0, "val_loss": 5.0, "val_tokens": 64}\n{"step": 30, "val_loss": 4.0, "val_tokens": 64}\n'
    log.write_bytes(complete + b'{"step": 40, "val_lo')
    _truncate_log(log, 40)
    assert log.read_bytes() == complete and _logged_steps_in(log) == {0, 30}
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "val_log.jsonl: dropped its torn end (20 bytes" in out[0] and "(step 30)" in out[0]


def _write_resume_state(spec: dict, tokens: Path, work: Path, step: int) -> None:
    """The resume state a run would have written after `step` optimizer steps (trained here, single thread)."""
    trainer = Trainer(spec, tokens, torch.device("cpu"))
    torch.set_num_threads(1)
    initial = None
    for i in range(step):
        loss = trainer.step(i)
        initial = loss if initial is None else initial
    torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(), "step": step,
                "initial_loss": initial}, work / RESUME_FILE)


def test_resume_truncates_the_log_past_the_resume_point(setup, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "ckpt").mkdir()
    # Fake a run killed at step 25 with resume state from step 20 (taken from a straight run's state).
    _write_resume_state(dict(setup["spec"]), setup["tokens"], work, 20)
    lines = [json.loads(ln) for ln in (setup["straight"] / "log.jsonl").read_text().splitlines()][:3]  # 1, 10, 20
    lines.append({"step": 25, "loss": 123.0, "lr_factor": 1.0, "tokens_per_s": 1.0, "elapsed_s": 1.0})
    (work / "log.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    (work / "ckpt" / "step_000000.pt").write_bytes((setup["straight"] / "ckpt" / "step_000000.pt").read_bytes())
    train_run(setup["spec"], work, setup["tokens"], threads=1, resume_every=10)
    _assert_same_as_straight(setup, work)


BLOWUP = "optim: {adamw: {lr: 1000.0, embed_lr: 1000.0, head_lr: 1000.0}}\n"


def test_divergence_is_a_result(setup, tmp_path: Path) -> None:
    # The default rule is the paper's: validation perplexity > train.diverged_ppl (1000), no early stop.
    spec = _spec(tmp_path / "project", "adamw", BLOWUP)
    assert spec["train"]["early_stop_loss_ratio"] == 0.0 and spec["train"]["diverged_ppl"] == 1000.0
    work = tmp_path / "work"
    work.mkdir()
    result = train_run(spec, work, setup["tokens"], threads=1, resume_every=10)
    assert result["diverged"] is True and result["diverged_reason"].startswith("validation perplexity")
    assert result["val_ppl"] > 1000
    on_disk = json.loads((work / "result.json").read_text())
    assert on_disk["diverged"] is True and on_disk["steps_done"] == result["steps_done"]


def test_early_stop_is_opt_in_and_named(setup, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "project", "adamw", BLOWUP + "train: {early_stop_loss_ratio: 1.5}\n")
    work = tmp_path / "work"
    work.mkdir()
    result = train_run(spec, work, setup["tokens"], threads=1, resume_every=10)
    assert result["diverged"] is True and result["diverged_reason"].startswith("early stop: train loss")
    assert result["steps_done"] < 40
    assert json.loads((work / "result.json").read_text())["checkpoints"] == [0]


def test_early_stop_ratio_is_validated(tmp_path: Path) -> None:
    from specscale.study.spec import SpecError

    for i, text in enumerate(("train: {early_stop_loss_ratio: 0.5}\n", "train: {divergence_ratio: 1.5}\n")):
        with pytest.raises(SpecError, match="early_stop_loss_ratio"):  # the old key: "did you mean ...?"
            load_study(make_project(tmp_path / str(i), "preset: smoke\n" + text))


def test_non_finite_loss_ends_training(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A NaN loss cannot be trained on: training ends at once, even with the early stop off, and the run is the
    # paper's × (its perplexity is not finite).
    spec = _spec(tmp_path / "project", "adamw")
    step = Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, i: float("nan") if i == 4 else step(self, i))
    work = tmp_path / "work"
    work.mkdir()
    result = train_run(spec, work, setup["tokens"], threads=1, resume_every=10)
    assert result["diverged"] is True and result["diverged_reason"].startswith("validation perplexity not finite")
    assert result["steps_done"] == 5
    assert math.isnan(result["val_loss"]) and result["val_ppl"] == float("inf")


def test_divergence_by_validation_perplexity(setup, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "project", "adamw")
    spec["train"].update(steps=2, diverged_ppl=1.5)
    work = tmp_path / "work"
    work.mkdir()
    result = train_run(spec, work, setup["tokens"], threads=1, resume_every=10)
    assert result["diverged"] is True and "validation perplexity" in result["diverged_reason"]
    assert math.isfinite(result["val_loss"]) and result["steps_done"] == 2


# --- checkpoints and schedule --------------------------------------------------------------------------------------


def test_logged_and_kept_steps() -> None:
    assert logged_steps(40, 10) == [0, 1, 10, 20, 30, 40]
    assert logged_steps(25, 10) == [0, 1, 10, 20, 25]
    assert logged_steps(1, 10) == [0, 1]
    assert kept_checkpoints(40, 10, 2, False) == [0, 30, 40]
    assert kept_checkpoints(500, 50, 5, False) == [0, 300, 350, 400, 450, 500]
    assert kept_checkpoints(40, 10, 2, True) == [0, 1, 10, 20, 30, 40]
    assert kept_checkpoints(40, 10, 10, False) == [0, 1, 10, 20, 30, 40]


def test_lr_schedule_values() -> None:
    assert [lr_factor(s, 100, 0.2) for s in (0, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_factor(80, 100, 0.2) == pytest.approx(1.0)
    assert lr_factor(90, 100, 0.2) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.2) == pytest.approx(0.05)
    assert lr_factor(100, 100, 0.2) == 0.0
    assert all(lr_factor(s, 100, 0.0) == 1.0 for s in range(0, 101, 10))
    assert lr_factor(0, 10, 1.0) == pytest.approx(1.0) and lr_factor(5, 10, 1.0) == pytest.approx(0.5)


def test_logged_lr_factors_and_optimizer_lr(setup) -> None:
    # 40 steps, decay over the last 20% (from step 32): the log records the factor used for the step just taken.
    assert [f for _, _, f in _log(setup["straight"])] == [1.0, 1.0, 1.0, 1.0, pytest.approx(1 / 8)]
    trainer = Trainer(setup["spec"], setup["tokens"], torch.device("cpu"))
    assert trainer.set_lr(36) == pytest.approx(0.5)
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.5 * group["initial_lr"])
    lrs = {group["initial_lr"] for group in trainer.optimizer.param_groups}
    assert 0.02 in lrs  # Muon's matrix lr


def test_vocab_is_padded() -> None:
    spec = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_mult": 2, "pos_encoding": "rope",
                      "rope_base": 10000.0, "postln_fraction": 0.0, "vocab_multiple": 64}, "train": {"seq_len": 16}}
    assert model_shape(spec, 50257).vocab_size == 50304
    assert model_shape(spec, 64).vocab_size == 64 and model_shape(spec, 65).vocab_size == 128


# --- through the train stage ---------------------------------------------------------------------------------------


def test_train_stage_commits_without_resume_state(setup, tmp_path: Path) -> None:
    from specscale.store.runs import PROVENANCE_FILE, RunStore, read_json
    from specscale.launch.launcher import run_task
    from stages.table import BY_NAME

    spec = dict(setup["spec"])
    spec["runtime"] = {"threads": 1, "resume_every": 10}
    store = RunStore(tmp_path)
    tok = store.final_dir("tokenize", spec["inputs"]["tokenize"])
    tok.mkdir(parents=True)
    for name in ("train.bin", "val.bin", "tokens.json"):
        (tok / name).write_bytes((setup["tokens"] / name).read_bytes())
    (tok / "_SUCCESS").write_text("")
    key = "trainkey"
    store.begin("train", key, spec)
    run_task(BY_NAME["train"].entry, "train", key, str(tmp_path))
    final = store.final_dir("train", key)
    assert store.is_done("train", key) and not (final / RESUME_FILE).exists()
    assert sorted(p.name for p in (final / "ckpt").iterdir()) == ["step_000000.pt", "step_000030.pt",
                                                                   "step_000040.pt"]
    prov = read_json(final / PROVENANCE_FILE)
    assert prov["device"] == "cpu" and prov["steps_done"] == 40 and prov["diverged"] is False
    _assert_same_as_straight(setup, final)


def test_validation_at_every_kept_checkpoint(setup, tmp_path: Path) -> None:
    """train.checkpoint_val_tokens: a validation loss per kept checkpoint, the last one equal to result.json's (same
    tokens), and the training itself unchanged (checkpoints, log and result identical to the plain run)."""
    from specscale.store.runs import VAL_LOG_FILE

    spec = json.loads(json.dumps(setup["spec"]))
    spec["train"]["checkpoint_val_tokens"] = spec["train"]["val_tokens"]
    work = tmp_path / "w"
    work.mkdir()
    train_run(spec, work, setup["tokens"], threads=1, resume_every=10)
    _assert_same_as_straight(setup, work)
    entries = [json.loads(ln) for ln in (work / VAL_LOG_FILE).read_text().splitlines()]
    assert [e["step"] for e in entries] == [0, 30, 40]
    assert entries[-1]["val_loss"] == json.loads((work / "result.json").read_text())["val_loss"]
    assert entries[0]["val_loss"] > entries[-1]["val_loss"]  # the untrained network predicts worse
    # a resume from step 30 neither repeats nor drops an entry
    (work / "result.json").unlink()
    (work / "ckpt" / "step_000040.pt").unlink()
    _write_resume_state(spec, setup["tokens"], work, 30)
    train_run(spec, work, setup["tokens"], threads=1, resume_every=10)
    again = [json.loads(ln) for ln in (work / VAL_LOG_FILE).read_text().splitlines()]
    assert again == entries
