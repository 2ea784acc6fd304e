"""The GPT of docs/science.md §2 (modded-nanoGPT style) with the paper's ablation knobs.

RoPE or NoPE, QK RMS-norm, parameter-free RMSNorm, no biases, untied head, ReLU² FFN of width D = k·d_model,
a head count independent of d_model, and partial PostLN (the *first* ⌊L·f⌋ blocks are PostLN).

Parameter names are a contract with the optimizer factory (routing is by role, read from the name):
`embed.weight`, `blocks.{i}.attn.{q,k,v,o}.weight`, `blocks.{i}.mlp.{c_fc,c_proj}.weight`, `head.weight`.
FFN sites for the probe: `blocks.{i}.mlp.site_pre` (c_fc output, before ReLU²) and `.site_post` (c_proj input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    pos_encoding: str = "rope"  # "rope" | "nope"
    rope_base: float = 10000.0
    postln_fraction: float = 0.0
    max_seq_len: int = 4096

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.pos_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError("RoPE needs an even head dimension")
        if self.pos_encoding not in ("rope", "nope"):
            raise ValueError(f"pos_encoding must be 'rope' or 'nope', got {self.pos_encoding!r}")
        if not 0.0 <= self.postln_fraction <= 1.0:
            raise ValueError(f"postln_fraction must be in [0, 1], got {self.postln_fraction}")

    @property
    def n_postln(self) -> int:
        return math.floor(self.n_layers * self.postln_fraction + 1e-9)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim."""
    return F.rms_norm(x, (x.size(-1),))


def init_linear_(layer: nn.Linear) -> None:
    """docs/science.md §2: N(0, fan_in^-½ · min(1, √(fan_out/fan_in)))."""
    fan_out, fan_in = layer.weight.shape
    std = fan_in**-0.5 * min(1.0, math.sqrt(fan_out / fan_in))
    nn.init.normal_(layer.weight, mean=0.0, std=std)


class Rotary(nn.Module):
    """Rotary position embedding on (B, H, T, hd) tensors; cos/sin cached as buffers (not parameters)."""

    def __init__(self, head_dim: int, base: float, max_seq_len: int) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        d = shape.d_model
        self.n_heads = shape.n_heads
        self.head_dim = d // shape.n_heads
        # Separate q, k, v: a fused QKV orthogonalised as one matrix is a different Muon (docs/science.md §4).
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.rotary = Rotary(self.head_dim, shape.rope_base, shape.max_seq_len) if shape.pos_encoding == "rope" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        split = lambda t: t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm; commutes with RoPE (a per-pair rotation keeps the RMS)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Module):
    """c_proj(relu(c_fc(x))²) with named identity sites that forward hooks can capture."""

    def __init__(self, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, ffn_dim, bias=False)
        self.c_proj = nn.Linear(ffn_dim, d_model, bias=False)
        self.site_pre = nn.Identity()  # (B, T, D) c_fc output
        self.site_post = nn.Identity()  # (B, T, D) c_proj input, after ReLU²

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.site_pre(self.c_fc(x))
        return self.c_proj(self.site_post(F.relu(h).square()))


class Block(nn.Module):
    def __init__(self, shape: ModelShape, postln: bool) -> None:
        super().__init__()
        self.postln = postln
        self.attn = Attention(shape)
        self.mlp = MLP(shape.d_model, shape.ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postln:
            x = rms_norm(x + self.attn(x))
            return rms_norm(x + self.mlp(x))
        x = x + self.attn(rms_norm(x))
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape, postln=i < shape.n_postln) for i in range(shape.n_layers))
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, mean=0.0, std=1.0)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear_(module)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 → logits (B, T, V) in fp32 (the paper keeps logits in fp32 under bf16 autocast)."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(rms_norm(x)).float()

    def forward_through(self, idx: torch.Tensor, last_layer: int) -> torch.Tensor:
        """idx (B, T) int64 → the residual stream (B, T, d_model) after block `last_layer`, no head. The probe runs
        only the blocks its captured sites need: every op up to that block is the one `forward` runs, so the
        captured activations are bit-identical, and blocks past it and the head (V·d per token) are skipped."""
        if not 0 <= last_layer < len(self.blocks):
            raise ValueError(f"last_layer {last_layer} is not a block of this {len(self.blocks)}-layer model")
        x = self.embed(idx)
        for block in self.blocks[: last_layer + 1]:
            x = block(x)
        return x

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def ffn_sites(self) -> dict[tuple[int, str], nn.Module]:
        """(layer, "pre"|"post") → module whose forward output is that site's (B, T, D) activation."""
        sites: dict[tuple[int, str], nn.Module] = {}
        for i, block in enumerate(self.blocks):
            sites[(i, "pre")] = block.mlp.site_pre
            sites[(i, "post")] = block.mlp.site_post
        return sites

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _block_forward_flops(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs per token of one block: 2 per multiply-add of the q, k, v, o and FFN matmuls (4d² + 2dD
    weights), plus QKᵀ and AV (2·seq·d multiply-adds per token, counted over the whole window)."""
    d, D = shape.d_model, shape.ffn_dim
    return 2.0 * (4 * d * d + 2 * d * D) + 2.0 * 2 * seq_len * d


def probe_forward_flops(shape: ModelShape, seq_len: int, last_layer: int) -> float:
    """Forward FLOPs per token of `GPT.forward_through(·, last_layer)`: blocks 0…last_layer, no head."""
    return (last_layer + 1) * _block_forward_flops(shape, seq_len)


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token: 3 × the forward (backward ≈ 2 × forward), the forward being every block plus the
    head (V·d weights, 2 FLOPs per multiply-add): the usual Kaplan 6·N_matmul + attention scores estimate."""
    head = 2.0 * shape.vocab_size * shape.d_model
    return 3.0 * (shape.n_layers * _block_forward_flops(shape, seq_len) + head)
