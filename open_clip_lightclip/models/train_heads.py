"""LightCLIP's training-only heads: token projections, and the masked-text pass with fusion + MLM head.

They sit on the model as ``model.lightclip_train`` (see ``TRAINING_ONLY_MODULES``), run
only inside ``LightCLIP.forward`` in training mode, and are dropped by export.

Every tensor the loss needs is returned per sample, so the trainer's ``--accum-freq``
(which concatenates cached model outputs along the batch) and DDP both work:

* ``image_tokens`` (B, N, T), ``text_tokens`` (B, L, T): projected, L2-normalised tokens;
  ``text_mask`` (B, L): real word positions (no SOT / EOT / padding).
* ``mlm_loss_sum`` (B,), ``mlm_count`` (B,): summed cross-entropy over each sample's
  masked positions, and how many there are.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .fusion import FusionBlock, ImageKV
from .numerics import no_autocast

__all__ = ["LightCLIPTrainCfg", "LightCLIPTrainHeads", "mask_tokens", "max_predictions", "TOKEN_TEMPERATURES"]


@dataclass
class LightCLIPTrainCfg:
    token: bool = True  # token-level alignment (token projections)
    token_dim: int = 256
    mlm: bool = True  # MLM with fusion
    fusion_layers: Sequence[int] = (2, 4, 6)  # fuse after these text layers (1-based)
    mask_prob: float = 0.15
    mask_rule: Tuple[float, float, float] = (0.8, 0.1, 0.1)  # [MASK] / random token / unchanged
    mlm_attention: str = "bidirectional"  # or "causal" (CLIP's own mask)
    fusion_mlp_ratio: float = 2.0
    token_temperature: str = "shared"  # token-term logit scale: the model's logit_scale, or "own" (learned)


TOKEN_TEMPERATURES = ("shared", "own")


def mask_tokens(
        text: torch.Tensor,
        word_mask: torch.Tensor,
        mask_prob: float,
        mask_rule: Tuple[float, float, float] = (0.8, 0.1, 0.1),
        vocab_size: int = 49408,
        generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's masking of real word positions only (Devlin et al. 2019, its reference ``create_pretraining_data``):
    each text with ``n`` words gets exactly ``max(1, round(mask_prob * n))`` positions to predict, drawn uniformly.

    Returns ``(selected, use_mask_embedding, input_ids)``: positions to predict (B, L bool), the subset that gets
    the learned mask embedding, and the ids fed to the token embedding (random tokens replace ``mask_rule[1]`` of
    the selected ones; the rest stay unchanged). Static shapes, no host sync (``torch.compile``-friendly).
    """
    p_mask, p_random, p_keep = mask_rule
    if abs(p_mask + p_random + p_keep - 1) > 1e-6:
        raise ValueError(f"mask_rule {mask_rule} must sum to 1")
    u = torch.empty_like(text, dtype=torch.float32).uniform_(generator=generator)
    n_words = word_mask.sum(dim=1, keepdim=True)
    n_select = torch.where(n_words > 0, torch.round(mask_prob * n_words).clamp(min=1), 0)
    rank = torch.where(word_mask, u, 2.0).argsort(dim=1).argsort(dim=1)  # words first, in random order
    selected = rank < n_select
    v = torch.empty_like(text, dtype=torch.float32).uniform_(generator=generator)
    use_mask = selected & (v < p_mask)
    use_random = selected & (v >= p_mask) & (v < p_mask + p_random)
    random_ids = torch.empty_like(text).random_(1, vocab_size - 2, generator=generator)
    input_ids = torch.where(use_random, random_ids, text)
    return selected, use_mask, input_ids


def max_predictions(length: int, mask_prob: float) -> int:
    """An upper bound on :func:`mask_tokens`' positions per text of ``length`` positions (at most ``length - 2``
    words: SOT and EOT are never words), the static width of the MLM head's input."""
    return max(1, min(length, math.floor(mask_prob * max(length - 2, 0) + 0.5) + 1))


class LightCLIPTrainHeads(nn.Module):
    """Token projections and the MLM-with-fusion pass over a LightCLIP model's towers."""

    def __init__(self, cfg: LightCLIPTrainCfg, image_token_dim: int, text_width: int, text_heads: int,
                 text_layers: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        if cfg.token:
            self.image_token_proj = nn.Linear(image_token_dim, cfg.token_dim)
            self.text_token_proj = nn.Linear(text_width, cfg.token_dim)
            if cfg.token_temperature not in TOKEN_TEMPERATURES:
                raise ValueError(f"token_temperature must be one of {TOKEN_TEMPERATURES}, got {cfg.token_temperature!r}")
            if cfg.token_temperature == "own":  # log(1/0.07), CLIP's initial temperature
                self.token_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if cfg.mlm:
            bad = [layer for layer in cfg.fusion_layers if not 1 <= layer <= text_layers]
            if bad:
                raise ValueError(f"fusion layer(s) {bad} don't exist: the text tower has layers 1..{text_layers}")
            if cfg.mlm_attention not in ("bidirectional", "causal"):
                raise ValueError(f"mlm_attention must be 'bidirectional' or 'causal', got {cfg.mlm_attention!r}")
            self.mask_embedding = nn.Parameter(torch.randn(text_width) * 0.02)
            self.image_kv = ImageKV(image_token_dim, text_width, text_heads)  # shared by every fusion block
            self.fusion = nn.ModuleDict({
                str(layer): FusionBlock(text_width, text_heads, cfg.fusion_mlp_ratio)
                for layer in sorted(set(cfg.fusion_layers))})
            self.mlm_transform = nn.Sequential(nn.Linear(text_width, text_width), nn.GELU(), nn.LayerNorm(text_width))
            self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))  # decoder weight tied to the token embedding

    def project_tokens(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor):
        return (F.normalize(self.image_token_proj(image_tokens), dim=-1),
                F.normalize(self.text_token_proj(text_tokens), dim=-1))

    def _attn_mask(self, text_tower, text: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Causal: CLIP's own mask. Bidirectional: every position sees every non-padding position."""
        if self.cfg.mlm_attention == "causal":
            return text_tower.attn_mask[:text.shape[1], :text.shape[1]]
        positions = torch.arange(text.shape[1], device=text.device)
        key_valid = positions[None, :] <= text.argmax(dim=-1, keepdim=True)  # up to and incl. EOT
        additive = torch.zeros(key_valid.shape, dtype=dtype, device=text.device)
        additive.masked_fill_(~key_valid, float("-inf"))
        heads = text_tower.transformer.resblocks[0].attn.num_heads
        return additive[:, None, :].expand(-1, text.shape[1], -1).repeat_interleave(heads, 0)

    def mlm(self, text_tower, text: torch.Tensor, word_mask: torch.Tensor, image_tokens: torch.Tensor,
            mlm_mask: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Masked text -> text layers, with fusion after ``fusion_layers`` -> MLM head -> per-sample CE sums."""
        cfg = self.cfg
        given_mask = mlm_mask is not None
        if mlm_mask is None:
            mlm_mask = mask_tokens(text, word_mask, cfg.mask_prob, cfg.mask_rule, text_tower.vocab_size)
        selected, use_mask, input_ids = mlm_mask
        cast_dtype = text_tower.transformer.get_cast_dtype()
        x = text_tower.token_embedding(input_ids).to(cast_dtype)
        x = torch.where(use_mask[..., None], self.mask_embedding.to(cast_dtype), x)
        x = x + text_tower.positional_embedding[:text.shape[1]].to(cast_dtype)  # text may be trimmed
        attn_mask = self._attn_mask(text_tower, text, x.dtype)
        k, v = self.image_kv(image_tokens)
        checkpointed = text_tower.transformer.grad_checkpointing and torch.is_grad_enabled()  # --grad-checkpointing
        for index, block in enumerate(text_tower.transformer.resblocks, start=1):
            if checkpointed:  # as the text tower's own forward checkpoints its blocks
                x = checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
            if str(index) in self.fusion:
                x = self.fusion[str(index)](x, k, v)
        x = text_tower.ln_final(x)
        # the head runs on a static number of positions per text (no boolean indexing: no host sync, and the
        # per-sample sums below are deterministic where index_add is not): the selected ones first, in order
        width = text.shape[1] if given_mask else max_predictions(text.shape[1], cfg.mask_prob)
        positions = torch.sort((~selected).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (B, K)
        valid = selected.gather(1, positions)
        hidden = self.mlm_transform(x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1])))  # (B, K, W)
        logits = F.linear(hidden, text_tower.token_embedding.weight, self.mlm_bias)
        with no_autocast(x):
            ce = F.cross_entropy(logits.float().flatten(0, 1), text.gather(1, positions).flatten(),
                                 reduction="none").view_as(valid)
            loss_sum = (ce * valid).sum(dim=1)
        return {"mlm_loss_sum": loss_sum, "mlm_count": selected.sum(dim=1).to(loss_sum.dtype)}
