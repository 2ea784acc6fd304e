"""The GPT: parameter names and shapes (a contract with the optimizer factory), init, knobs, FFN sites, causality."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specscale.model.gpt import GPT, ModelShape, Rotary, flops_per_token, init_linear_, probe_forward_flops, rms_norm
from tolerances import eps, rounding_tol

F32 = torch.float32


def _model(seed: int = 0, **kw) -> GPT:
    args = dict(vocab_size=128, d_model=32, n_layers=3, n_heads=4, ffn_dim=96)
    args.update(kw)
    torch.manual_seed(seed)
    return GPT(ModelShape(**args)).eval()


def _tokens(B: int = 2, T: int = 12, V: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _block_ops(shape: ModelShape, T: int) -> int:
    """Rounded operations along one output entry of a block: RMSNorm (d + 4), the q/k/v projection (d), RoPE (5),
    QK-norm (hd + 4), a score (hd + 1), softmax (T + 3), the weighted sum of values (T), the output projection (d),
    the residual (1); RMSNorm (d + 4), c_fc (d), ReLU² (1), c_proj (ffn_dim), the residual (1)."""
    d, hd = shape.d_model, shape.d_model // shape.n_heads
    return 3 * (d + 4) + (hd + 4) + (hd + 1) + (T + 3) + T + 5 + 2 * d + 3 + shape.ffn_dim


def _forward_tol(model: GPT, idx: torch.Tensor) -> float:
    """Bound on the fp32 rounding error of the logits: every block's chain plus the final RMSNorm and the head (d
    each), at the largest hidden-state or logit magnitude on this input. The blocks' Jacobians are taken as O(1)
    (RMSNorm'd inputs, 1/√fan_in init)."""
    shape = model.shape
    with torch.no_grad():
        x = model.embed(idx)
        magnitudes = [x.abs().max()]
        for block in model.blocks:
            x = block(x)
            magnitudes.append(x.abs().max())
        magnitudes.append(model.head(rms_norm(x)).abs().max())
    n_ops = shape.n_layers * _block_ops(shape, idx.size(1)) + 2 * shape.d_model + 4
    return rounding_tol(F32, n_ops, magnitude=max(magnitudes))


# --- parameters ----------------------------------------------------------------------------------------------------


def test_parameter_names_and_shapes() -> None:
    V, d, L, D = 128, 32, 3, 96
    model = _model()
    expected = {"embed.weight": (V, d), "head.weight": (V, d)}
    for i in range(L):
        for m in "qkvo":
            expected[f"blocks.{i}.attn.{m}.weight"] = (d, d)
        expected[f"blocks.{i}.mlp.c_fc.weight"] = (D, d)
        expected[f"blocks.{i}.mlp.c_proj.weight"] = (d, D)
    got = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert got == expected  # no biases, no norm gains, nothing else
    assert model.num_params() == sum(math.prod(s) for s in expected.values())
    assert set(model.state_dict()) == set(expected)  # RoPE tables are non-persistent buffers


def test_head_is_untied() -> None:
    model = _model()
    assert model.head.weight.data_ptr() != model.embed.weight.data_ptr()
    assert not torch.equal(model.head.weight, model.embed.weight)


def test_logits_shape_and_dtype() -> None:
    model = _model()
    idx = _tokens(B=3, T=10)
    logits = model(idx)
    assert logits.shape == (3, 10, 128) and logits.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(idx).dtype == torch.float32  # logits stay fp32 under bf16 autocast
    targets = _tokens(B=3, T=10, seed=2)
    # Oracle: the same logits, cross-entropy in float64. fp32 rounding of the loss: a log-sum-exp over V = 128 and a
    # mean over 30 tokens, plus 4, at |logit| + ln V. Shifted targets or a sum instead of a mean are O(1) off.
    expected = F.cross_entropy(logits.double().reshape(-1, 128), targets.reshape(-1))
    tol = rounding_tol(F32, 128 + 30 + 4, magnitude=logits.abs().max().item() + math.log(128))
    torch.testing.assert_close(model.loss(idx, targets).double(), expected, rtol=0, atol=tol)


# --- init ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fan_in,fan_out", [(1024, 256), (256, 1024), (512, 512)])
def test_init_linear_std_rule(fan_in: int, fan_out: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(fan_in, fan_out, bias=False)
    init_linear_(layer)
    expected = fan_in**-0.5 * min(1.0, math.sqrt(fan_out / fan_in))
    assert abs(layer.weight.std().item() / expected - 1) < 0.02
    assert abs(layer.weight.mean().item()) < 0.02 * expected


def test_model_init_follows_the_rule() -> None:
    d, D, V = 64, 512, 4096
    model = _model(vocab_size=V, d_model=d, n_layers=1, n_heads=4, ffn_dim=D)
    block = model.blocks[0]
    cases = {
        "c_fc (D×d, fan_out > fan_in)": (block.mlp.c_fc.weight, d**-0.5),
        "c_proj (d×D)": (block.mlp.c_proj.weight, D**-0.5 * math.sqrt(d / D)),
        "q (d×d)": (block.attn.q.weight, d**-0.5),
        "head (V×d)": (model.head.weight, d**-0.5),
        "embed": (model.embed.weight, 1.0),
    }
    for name, (w, std) in cases.items():
        assert abs(w.std().item() / std - 1) < 0.03, name


def test_init_is_a_function_of_the_seed() -> None:
    a, b, c = _model(seed=5), _model(seed=5), _model(seed=6)
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), n
        assert not torch.equal(p, r), n


# --- knobs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction,layers,expected", [
    (0.5, 4, [True, True, False, False]),
    (0.0, 4, [False] * 4),
    (1.0, 4, [True] * 4),
    (0.3, 4, [True, False, False, False]),  # ⌊1.2⌋ = 1
    (0.5, 3, [True, False, False]),  # ⌊1.5⌋ = 1
    (0.75, 4, [True, True, True, False]),
])
def test_postln_fraction_picks_the_first_blocks(fraction: float, layers: int, expected: list[bool]) -> None:
    model = _model(n_layers=layers, postln_fraction=fraction)
    assert [b.postln for b in model.blocks] == expected
    assert model.shape.n_postln == sum(expected)


def test_postln_block_output_is_normalised() -> None:
    """A PostLN block ends in RMSNorm (unit RMS per position); a PreLN block adds to the residual unnormalised."""
    model = _model(n_layers=2, postln_fraction=0.5)
    x = 3.0 * torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        post, pre = model.blocks[0](x), model.blocks[1](x)
    rms = lambda t: t.double().pow(2).mean(-1).sqrt()
    # Float64 oracles: the blocks' formulas on float64 copies of the blocks and of x.
    blocks64 = copy.deepcopy(model.blocks).double()
    x64 = x.double()
    with torch.no_grad():
        h = rms_norm(x64 + blocks64[0].attn(x64))
        z = h + blocks64[0].mlp(h)
        post_expected = rms_norm(z)
        h = x64 + blocks64[1].attn(rms_norm(x64))
        pre_expected = h + blocks64[1].mlp(rms_norm(h))
    # RMS of an fp32 RMSNorm output: its chain (d = 32 terms + 4), plus F.rms_norm's own ε = eps(fp32) under the root,
    # which lowers the RMS by ε/(2·mean(z²)). Not normalising at all is O(1) off.
    tol = rounding_tol(F32, 32 + 4) + eps(F32) / (2 * z.pow(2).mean(-1).min().item())
    torch.testing.assert_close(rms(post), torch.ones(2, 8).double(), atol=tol, rtol=0)
    assert not torch.allclose(rms(pre), torch.ones(2, 8).double(), atol=0.1)
    # and it is x + attn(norm x) + mlp(...): fp32 block vs the float64 formula, one block's chain at the largest
    # activation (|x| ≈ 10); a misplaced norm or residual would be O(1) off
    T = x.size(1)
    magnitude = max(x.abs().max(), pre_expected.abs().max())
    tol = rounding_tol(F32, _block_ops(model.shape, T), magnitude=magnitude)
    torch.testing.assert_close(pre.double(), pre_expected, atol=tol, rtol=0)
    torch.testing.assert_close(post.double(), post_expected, atol=tol, rtol=0)


def test_nope_has_no_rotary_and_rope_does() -> None:
    nope, rope = _model(pos_encoding="nope"), _model(pos_encoding="rope")
    assert all(b.attn.rotary is None for b in nope.blocks)
    assert all(isinstance(b.attn.rotary, Rotary) for b in rope.blocks)
    assert not any(isinstance(m, Rotary) for m in nope.modules())


def test_nope_is_blind_to_the_order_of_the_prefix() -> None:
    """One NoPE layer with causal attention: the last position attends to a *set* of keys, so permuting the tokens
    before it leaves its logits unchanged. RoPE sees positions, so the same permutation changes them."""
    T = 10
    idx = torch.arange(3, 3 + T).unsqueeze(0)
    perm = torch.cat([torch.randperm(T - 1, generator=torch.Generator().manual_seed(0)), torch.tensor([T - 1])])
    assert not torch.equal(perm, torch.arange(T))
    shuffled = idx[:, perm]
    nope = _model(n_layers=1, pos_encoding="nope")
    rope = _model(n_layers=1, pos_encoding="rope")
    rope.load_state_dict(nope.state_dict())  # identical weights: the only difference is RoPE
    # Equal in exact arithmetic; in fp32 the keys are summed in another order: each side within the forward pass's
    # rounding bound of the exact logits, so within twice that of each other. RoPE's change is ≥ 100× larger.
    tol = 2 * max(_forward_tol(nope, idx), _forward_tol(nope, shuffled))
    with torch.no_grad():
        torch.testing.assert_close(nope(idx)[:, -1], nope(shuffled)[:, -1], atol=tol, rtol=0)
        assert (rope(idx)[:, -1] - rope(shuffled)[:, -1]).abs().max() > 100 * tol
        # RoPE's first position is not rotated (angle 0): there both models agree (exactly in exact arithmetic;
        # allow the two forward passes' rounding).
        torch.testing.assert_close(rope(idx)[:, 0], nope(idx)[:, 0], atol=tol, rtol=0)


def test_rotary_is_a_rotation() -> None:
    rot = Rotary(head_dim=8, base=10000.0, max_seq_len=16)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 8, generator=gen)
    y = rot(x)
    # Norms in float64. A slightly wrong angle is still a rotation; what changes the norm is the fp32 rounding of
    # cos and sin (2) and of x1·cos − x2·sin (3): 5 roundings per entry at |x|, √8 entries per norm.
    tol = math.sqrt(8) * rounding_tol(F32, 5, magnitude=x.abs().max())
    torch.testing.assert_close(y.double().norm(dim=-1), x.double().norm(dim=-1), atol=tol, rtol=0)
    # position 0: angle 0·θ = 0, cos 0 = 1 and sin 0 = 0 exactly, so x1·1 − x2·0 = x1 bit for bit (by design)
    assert torch.equal(y[..., 0, :], x[..., 0, :])
    # relative: <R_m q, R_n k> depends on m - n only
    q, k = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    rq = rot(q.expand(1, 1, 16, 8))[0, 0]
    rk = rot(k.expand(1, 1, 16, 8))[0, 0]
    # Dots in float64. fp32 angle p·θ: θ = base^(−i/hd) carries ≈ ln(base)·eps ≈ 8 eps of relative error, so the
    # angle's absolute error is ≤ 8·p·eps (p ≤ 9), plus cos/sin and the rotation (5): relative error per rotated
    # entry ≤ (8·9 + 5)·eps; four rotated vectors enter the difference of dots, each bounded by ‖q‖‖k‖.
    tol = 4 * rounding_tol(F32, 8 * 9 + 5, magnitude=(q.norm() * k.norm()).item())
    torch.testing.assert_close(rq[5].double() @ rk[2].double(), rq[9].double() @ rk[6].double(), atol=tol, rtol=0)
    assert (rq[5].double() @ rk[2].double() - rq[9].double() @ rk[5].double()).abs() > 10 * tol  # m − n matters


def test_heads_independent_of_d_model() -> None:
    two = _model(d_model=64, n_heads=2, ffn_dim=128, n_layers=1)
    eight = _model(d_model=64, n_heads=8, ffn_dim=128, n_layers=1)
    assert {n: p.shape for n, p in two.named_parameters()} == {n: p.shape for n, p in eight.named_parameters()}
    assert two.blocks[0].attn.head_dim == 32 and eight.blocks[0].attn.head_dim == 8
    eight.load_state_dict(two.state_dict())
    idx = _tokens()
    # same weights, different head split: far more than the two forward passes' rounding could explain
    tol = 2 * max(_forward_tol(two, idx), _forward_tol(eight, idx))
    with torch.no_grad():
        assert (two(idx) - eight(idx)).abs().max() > 10 * tol


def test_bad_head_counts_raise() -> None:
    with pytest.raises(ValueError, match="n_heads=5 must divide d_model=64"):
        ModelShape(vocab_size=8, d_model=64, n_layers=1, n_heads=5, ffn_dim=64)
    with pytest.raises(ValueError, match="even head dimension"):
        ModelShape(vocab_size=8, d_model=48, n_layers=1, n_heads=16, ffn_dim=64)  # head_dim 3 under RoPE
    ModelShape(vocab_size=8, d_model=48, n_layers=1, n_heads=16, ffn_dim=64, pos_encoding="nope")  # fine
    with pytest.raises(ValueError, match="pos_encoding"):
        ModelShape(vocab_size=8, d_model=64, n_layers=1, n_heads=4, ffn_dim=64, pos_encoding="alibi")
    with pytest.raises(ValueError, match="postln_fraction"):
        ModelShape(vocab_size=8, d_model=64, n_layers=1, n_heads=4, ffn_dim=64, postln_fraction=1.5)


# --- FFN sites -----------------------------------------------------------------------------------------------------


def test_ffn_site_hooks_capture_pre_and_post() -> None:
    L, D = 3, 96
    model = _model()
    sites = model.ffn_sites()
    assert set(sites) == {(i, s) for i in range(L) for s in ("pre", "post")}
    captured: dict = {}
    c_proj_inputs: dict = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, key=key: captured.__setitem__(key, out.detach()))
               for key, m in sites.items()]
    for i, block in enumerate(model.blocks):
        handles.append(block.mlp.c_proj.register_forward_pre_hook(
            lambda mod, inp, i=i: c_proj_inputs.__setitem__(i, inp[0].detach())))
        handles.append(block.mlp.c_fc.register_forward_hook(
            lambda mod, inp, out, i=i: c_proj_inputs.__setitem__(("fc", i), out.detach())))
    with torch.no_grad():
        model(_tokens(B=2, T=7))
    for h in handles:
        h.remove()
    assert set(captured) == set(sites)
    for i in range(L):
        pre, post = captured[(i, "pre")], captured[(i, "post")]
        assert pre.shape == post.shape == (2, 7, D)
        assert torch.equal(post, F.relu(pre).square())
        assert torch.equal(pre, c_proj_inputs[("fc", i)])  # pre is c_fc's output
        assert torch.equal(post, c_proj_inputs[i])  # post is c_proj's input
        assert (post >= 0).all() and (pre < 0).any()


@pytest.mark.parametrize("postln", [0.0, 0.5])
def test_forward_through_captures_bit_identical_sites_and_stops(postln: float) -> None:
    """The probe's early exit: the sites of blocks 0…l come out of forward_through(·, l) exactly as out of the full
    forward (the same ops in the same order), and no later block runs."""
    model, idx = _model(postln_fraction=postln), _tokens(B=2, T=9)
    full: dict = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, key=key: full.__setitem__(key, out.detach()))
               for key, m in model.ffn_sites().items()]
    with torch.no_grad():
        model(idx)
        for last in range(model.shape.n_layers):
            full_copy, ran = dict(full), []
            full.clear()
            later = [b.register_forward_pre_hook(lambda mod, inp, i=i: ran.append(i))
                     for i, b in enumerate(model.blocks)]
            hidden = model.forward_through(idx, last)
            for h in later:
                h.remove()
            assert ran == list(range(last + 1)) and hidden.shape == (2, 9, 32)
            assert set(full) == {(i, s) for i in range(last + 1) for s in ("pre", "post")}
            assert all(torch.equal(full[k], full_copy[k]) for k in full)
            full.update({k: v for k, v in full_copy.items() if k not in full})
    for h in handles:
        h.remove()
    with pytest.raises(ValueError, match="last_layer 3 is not a block of this 3-layer model"):
        model.forward_through(idx, 3)


def test_probe_forward_flops() -> None:
    shape = ModelShape(vocab_size=100, d_model=8, n_layers=2, n_heads=2, ffn_dim=32)
    block = 2 * (4 * 64 + 2 * 8 * 32) + 2 * 2 * 16 * 8  # matmuls, then QKᵀ and AV: no head (100 · 8) at all
    assert [probe_forward_flops(shape, 16, last) for last in (0, 1)] == [block, 2 * block]
    # the last block's probe forward is the model's forward FLOPs (a third of training's) less the head
    assert probe_forward_flops(shape, 16, 1) == flops_per_token(shape, 16) / 3 - 2 * 100 * 8


# --- causality -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding,postln", [("rope", 0.0), ("nope", 0.0), ("rope", 0.5)])
def test_causal(pos_encoding: str, postln: float) -> None:
    model = _model(pos_encoding=pos_encoding, postln_fraction=postln)
    idx = _tokens(B=2, T=12)
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 128
    with torch.no_grad():
        a, b = model(idx), model(changed)
    # Positions before 8 compute the same values either way (exact arithmetic); allow twice the forward pass's
    # rounding bound. A leak of token 8 into them would be as large as its effect on later positions, ≥ 10× that.
    tol = 2 * max(_forward_tol(model, idx), _forward_tol(model, changed))
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=tol)
    assert (a[:, 8:] - b[:, 8:]).abs().amax(dim=-1).min() > 10 * tol  # every later position sees the change


def test_flops_per_token() -> None:
    shape = ModelShape(vocab_size=100, d_model=8, n_layers=2, n_heads=2, ffn_dim=32)
    matmul = 2 * (4 * 64 + 2 * 8 * 32) + 100 * 8
    assert flops_per_token(shape, seq_len=16) == 6.0 * matmul + 6.0 * 2 * 2 * 16 * 8
