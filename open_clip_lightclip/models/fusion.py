"""Fusion: cross-attention from (masked) text tokens to image patch tokens.

Used only by LightCLIP's MLM objective during training; never at inference.

``ImageKV`` projects the image tokens to keys and values **once**; every ``FusionBlock``
(one after each chosen text layer) attends to those same keys and values with its own
queries, output projection, MLP and gate. Image tokens outnumber the words several times
(49 patches at 224 px vs ~10 words), so projecting them once instead of once per block
is most of the fusion's cost saved.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ImageKV", "FusionBlock"]


class ImageKV(nn.Module):
    """Image tokens (B, N, C) -> keys and values (B, heads, N, width // heads), shared by all fusion blocks."""

    def __init__(self, image_dim: int, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(image_dim)
        self.kv = nn.Linear(image_dim, 2 * width)

    def forward(self, image_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = image_tokens.shape
        k, v = self.kv(self.norm(image_tokens)).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return k, v


class FusionBlock(nn.Module):
    """``x + tanh(gate) * out(attn(q(LN(x)), k, v))``, then ``x + tanh(mlp_gate) * MLP(LN(x))``.

    Flamingo's gated cross-attention dense block (Alayrac et al., 2022): both residual paths
    are gated, so with ``gate_init=0`` the block is exactly the identity at initialisation and
    switching fusion on never disturbs the text tower.

    Args:
        width: text width (queries and output).
        heads: attention heads (must match the ``ImageKV``).
        mlp_ratio: hidden size of the MLP relative to ``width``.
        gate_init: initial value of both learnable gates (attention and MLP paths).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 2.0, gate_init: float = 0.0):
        super().__init__()
        self.heads = heads
        self.ln_q = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.mlp_gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x: (B, L, W) text; k, v: (B, heads, N, W // heads) from ``ImageKV``."""
        b, length, width = x.shape
        q = self.q(self.ln_q(x)).view(b, length, self.heads, -1).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        x = x + self.gate.tanh() * self.out(attended.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp_gate.tanh() * self.mlp(self.ln_mlp(x))
