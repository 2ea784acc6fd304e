"""The GPT: parameter names and shapes (a contract with the optimizer factory), init, knobs, FFN sites, causality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specscale.model import GPT, ModelShape, Rotary, flops_per_token, init_linear_, rms_norm


def _model(seed: int = 0, **kw) -> GPT:
    args = dict(vocab_size=128, d_model=32, n_layers=3, n_heads=4, ffn_dim=96)
    args.update(kw)
    torch.manual_seed(seed)
    return GPT(ModelShape(**args)).eval()


def _tokens(B: int = 2, T: int = 12, V: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


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
    expected = F.cross_entropy(logits.reshape(-1, 128), targets.reshape(-1))
    assert torch.allclose(model.loss(idx, targets), expected, rtol=0, atol=1e-6)


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
    rms = lambda t: t.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms(post), torch.ones(2, 8), atol=1e-4)
    assert not torch.allclose(rms(pre), torch.ones(2, 8), atol=0.1)
    with torch.no_grad():  # and it is x + attn(norm x) + mlp(...) exactly
        h = x + model.blocks[1].attn(rms_norm(x))
        assert torch.allclose(pre, h + model.blocks[1].mlp(rms_norm(h)), atol=1e-5)
        h = rms_norm(x + model.blocks[0].attn(x))
        assert torch.allclose(post, rms_norm(h + model.blocks[0].mlp(h)), atol=1e-5)


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
    with torch.no_grad():
        assert torch.allclose(nope(idx)[:, -1], nope(shuffled)[:, -1], atol=1e-5)
        assert (rope(idx)[:, -1] - rope(shuffled)[:, -1]).abs().max() > 1e-3
        # RoPE's first position is not rotated (angle 0): there both models agree exactly.
        assert torch.allclose(rope(idx)[:, 0], nope(idx)[:, 0], atol=1e-6)


def test_rotary_is_a_rotation() -> None:
    rot = Rotary(head_dim=8, base=10000.0, max_seq_len=16)
    x = torch.randn(2, 3, 16, 8)
    y = rot(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[..., 0, :], x[..., 0, :])  # position 0: angle 0
    # relative: <R_m q, R_n k> depends on m - n only
    q, k = torch.randn(8), torch.randn(8)
    rq = rot(q.expand(1, 1, 16, 8))[0, 0]
    rk = rot(k.expand(1, 1, 16, 8))[0, 0]
    assert torch.allclose(rq[5] @ rk[2], rq[9] @ rk[6], atol=1e-5)


def test_heads_independent_of_d_model() -> None:
    two = _model(d_model=64, n_heads=2, ffn_dim=128, n_layers=1)
    eight = _model(d_model=64, n_heads=8, ffn_dim=128, n_layers=1)
    assert {n: p.shape for n, p in two.named_parameters()} == {n: p.shape for n, p in eight.named_parameters()}
    assert two.blocks[0].attn.head_dim == 32 and eight.blocks[0].attn.head_dim == 8
    eight.load_state_dict(two.state_dict())
    idx = _tokens()
    with torch.no_grad():
        assert (two(idx) - eight(idx)).abs().max() > 1e-3  # same weights, different head split


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


# --- causality -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding,postln", [("rope", 0.0), ("nope", 0.0), ("rope", 0.5)])
def test_causal(pos_encoding: str, postln: float) -> None:
    model = _model(pos_encoding=pos_encoding, postln_fraction=postln)
    idx = _tokens(B=2, T=12)
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 128
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], rtol=0, atol=1e-6)
    assert (a[:, 8:] - b[:, 8:]).abs().amax(dim=-1).min() > 1e-4  # every later position sees the change


def test_flops_per_token() -> None:
    shape = ModelShape(vocab_size=100, d_model=8, n_layers=2, n_heads=2, ffn_dim=32)
    matmul = 2 * (4 * 64 + 2 * 8 * 32) + 100 * 8
    assert flops_per_token(shape, seq_len=16) == 6.0 * matmul + 6.0 * 2 * 2 * 16 * 8
