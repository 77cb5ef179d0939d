"""Fusion block: cross-attention from (masked) text tokens to image patch tokens.

Used only by LightCLIP's MLM objective during training; never at inference.
"""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["FusionBlock"]


class FusionBlock(nn.Module):
    """``x + gate * MHA(LN(x), LN(img), LN(img))`` followed by a residual MLP.

    Args:
        width: text width (queries and output).
        heads: attention heads.
        mlp_ratio: hidden size of the MLP relative to ``width``.
        gate_init: initial value of the learnable residual gate (0 starts as identity, so
            turning fusion on never perturbs the text tower at initialisation).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 2.0, gate_init: float = 0.0):
        super().__init__()
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L, W) text; image_tokens: (B, N, W) already projected to the text width."""
        kv = self.ln_kv(image_tokens)
        attended, _ = self.attn(self.ln_q(x), kv, kv, key_padding_mask=key_padding_mask, need_weights=False)
        x = x + self.gate.tanh() * attended
        return x + self.mlp(self.ln_mlp(x))
