"""probe.source train_batch: each checkpoint step is measured on that step's training batch (docs/science.md §5),
bucket sets from rank 0's share, pooled from the whole batch; and the spectra stage's scratch stays one slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import finished, make_project, make_smoke_project, run, smoke_params
from specscale.tokens.buckets import batch_probe_set
from specscale.tokens.sets import BUCKET_NAMES, POOLED


def test_batch_sets_are_the_hand_selected_positions_of_the_batch() -> None:
    # 4 windows of 5 tokens; rank 0's share is the first 2 windows (10 positions). Types 0-1 HEAD, 2-3 MID, 4-7 TAIL.
    inputs = np.array([[0, 2, 4, 1, 5],
                       [3, 3, 0, 6, 7],
                       [4, 4, 4, 4, 4],
                       [0, 0, 0, 0, 0]])
    bucket_of_type = np.array([0, 0, 1, 1, 2, 2, 2, 2], dtype=np.int8)
    probe = batch_probe_set(inputs, bucket_of_type, rank_share_tokens=10, min_bucket_tokens=3, meta={"step": 7})
    # flat position p = window·5 + t; share = positions 0..9: tokens 0 2 4 1 5 | 3 3 0 6 7
    assert probe.bucket_indices["HEAD"].tolist() == [0, 3, 7]
    assert probe.bucket_indices["MID"].tolist() == [1, 5, 6]
    assert probe.bucket_indices["TAIL"].tolist() == [2, 4, 8, 9]
    assert probe.pooled_indices.tolist() == list(range(20))  # the whole global batch, all ranks
    np.testing.assert_array_equal(probe.windows, inputs)
    assert {n: b["available"] for n, b in probe.buckets.items()} == {"HEAD": 3, "MID": 3, "TAIL": 4}
    # A bucket under min_bucket_tokens in the share is skipped (no positions), as for the held-out set.
    rare = batch_probe_set(inputs, bucket_of_type, rank_share_tokens=10, min_bucket_tokens=4)
    assert rare.buckets["HEAD"]["skipped"] and rare.bucket_indices["HEAD"].size == 0
    assert rare.bucket_indices["TAIL"].tolist() == [2, 4, 8, 9]
    # 0 = the whole batch is one rank's share
    whole = batch_probe_set(inputs, bucket_of_type, rank_share_tokens=0, min_bucket_tokens=0)
    assert whole.bucket_indices["TAIL"].tolist() == [2, 4, 8, 9, 10, 11, 12, 13, 14]


@pytest.mark.parametrize("share", [7, 25, -5])
def test_rank_share_must_be_whole_windows_within_the_batch(share: int) -> None:
    with pytest.raises(ValueError, match="probe.rank_share_tokens"):
        batch_probe_set(np.zeros((4, 5), dtype=np.int64), np.zeros(8, dtype=np.int8), share, 0)


@pytest.mark.parametrize("share", [100, 1024, -64])
def test_spec_rejects_a_rank_share_that_is_not_whole_windows_of_one_batch(tmp_path: Path, share: int) -> None:
    from specscale.study.spec import SpecError, load_study

    # smoke: batch 8 windows of 64 tokens = 512 tokens
    params = make_project(tmp_path, f"preset: smoke\nprobe: {{source: train_batch, rank_share_tokens: {share}}}\n")
    with pytest.raises(SpecError, match="key 'probe.rank_share_tokens'"):
        load_study(params)


def test_paper_presets_measure_the_training_batch(tmp_path: Path) -> None:
    from specscale.study.plan import probe_spec
    from specscale.study.spec import load_study

    for preset, share in (("gpt2-160m", 131072), ("gpt2-350m", 65536)):
        study = load_study(make_project(tmp_path / preset, f"preset: {preset}\n"))
        assert probe_spec(study) | {} == {"sites": ["pre", "post"], "dtype": "float16", "chunk_tokens": 8192,
                                          "source": "train_batch", "rank_share_tokens": share,
                                          "min_bucket_tokens": 1000}
        assert int(study.train.batch_size) * int(study.train.seq_len) == 524288  # pooled: the whole batch


SHARE = 128  # 2 of the smoke batch's 8 windows of 64 tokens


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = smoke_params(widths=[1, 2], probe={"source": "train_batch", "rank_share_tokens": SHARE,
                                                "min_bucket_tokens": 8, "keep_activations": "all"})
    root = make_smoke_project(tmp_path_factory.mktemp("probe_source"), params)
    out = run(["dvc", "repro"], root, check=False)
    (root / "repro.log").write_text(out.stdout + out.stderr)
    return root


def _step_batch(project: Path, train_key: str, step: int) -> np.ndarray:
    """Inputs of training step `step`, picked from the token file by hand from the training sampler's window ids."""
    from specscale.tokens.shards import TokenWindows, open_tokens

    spec = json.loads((project / "runs/train" / train_key / "spec.json").read_text())
    tokens_dir = project / "runs/tokenize" / spec["inputs"]["tokenize"]
    tokens = np.asarray(open_tokens(tokens_dir / "train.bin"))
    T, B = spec["train"]["seq_len"], spec["train"]["batch_size"]
    ids = TokenWindows(tokens, T).sample_indices(step, B, spec["seed"])
    return np.stack([tokens[i * T:i * T + T] for i in ids])  # window i: inputs tokens[i·T : i·T + T]


@pytest.mark.slow
def test_train_batch_end_to_end(project: Path) -> None:
    import torch
    import xarray as xr
    import zarr

    from specscale.model.build import build_model, checkpoint_path
    from tolerances import rounding_tol

    log = (project / "repro.log").read_text()
    assert len(finished(project, "spectra")) == 2, log[-3000:]
    key = sorted(finished(project, "activations"))[0]
    act_spec = json.loads((project / "runs/activations" / key / "spec.json").read_text())
    train_key = act_spec["inputs"]["train"]
    bucket_of_type = np.load(project / "runs/buckets" / act_spec["inputs"]["buckets"] / "bucket_of_type.npy")
    manifest = json.loads((project / "runs/activations" / key / "manifest.json").read_text())
    assert manifest["source"] == "train_batch"
    scratch = project / "runs/.scratch/activations"
    assert not scratch.exists() or not any(scratch.iterdir()), "every slice is consumed"
    group = zarr.open_group(str(project / "runs/activations" / key / "acts.zarr"), mode="r")
    train_dir = project / "runs/train" / train_key
    tspec = json.loads((train_dir / "spec.json").read_text())
    result = json.loads((train_dir / "result.json").read_text())
    model = build_model(tspec, result["vocab_size"], torch.device("cpu"))
    step = max(manifest["steps"])
    x = _step_batch(project, train_key, step)
    share = x.reshape(-1)[:SHARE]
    hand = {name: [p for p in range(SHARE) if bucket_of_type[share[p]] == k] for k, name in enumerate(BUCKET_NAMES)}
    hand[POOLED] = list(range(x.size))
    assert manifest["sets_by_step"][str(step)] == {n: len(v) for n, v in hand.items() if len(v) >= 8}
    # The kept activations are the checkpoint's FFN outputs at exactly those positions of batch `step`.
    model.load_state_dict(torch.load(checkpoint_path(train_dir, step), weights_only=True))
    model.eval()
    captured = {}
    module = model.ffn_sites()[(0, "post")]
    module.register_forward_hook(lambda _m, _i, out: captured.update(post=out.detach()))
    with torch.no_grad():
        model(torch.as_tensor(x, dtype=torch.int64))
    flat = captured["post"].reshape(-1, captured["post"].shape[-1]).numpy()
    for name, pos in hand.items():
        if len(pos) < 8:
            continue
        stored = group[f"step_{step:06d}/L00/post/{name}"][:]
        expected = flat[pos]
        tol = rounding_tol(np.float32, n_ops=4 * tspec["model"]["d_model"], magnitude=float(np.abs(expected).max()))
        np.testing.assert_allclose(stored, expected, rtol=0, atol=tol)
    # N is recorded with every spectrum: ranks.csv and n_tokens (step, bucket) follow each step's batch.
    import pandas as pd

    sdir = next(project / "runs/spectra" / k for k in finished(project, "spectra")
                if json.loads((project / "runs/spectra" / k / "spec.json").read_text())["measure_key"]
                == act_spec["measure_key"])
    ranks = pd.read_csv(sdir / "ranks.csv")
    ds = xr.open_zarr(sdir / "spectra.zarr", consolidated=False)
    assert ds.attrs["source"] == "train_batch"
    for s, sets in manifest["sets_by_step"].items():
        got = ranks[ranks["step"] == int(s)].groupby("bucket")["N"].unique().to_dict()
        assert {b: list(v) for b, v in got.items()} == {b: [n] for b, n in sets.items()}
        assert {b: int(ds["n_tokens"].sel(step=int(s), bucket=b)) for b in sets} == sets
    assert set(ranks["N"][ranks["bucket"] == POOLED]) == {x.size}
