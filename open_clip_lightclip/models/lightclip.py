"""``LightCLIP``: a drop-in for ``open_clip.CLIP`` with a timm CNN image tower.

Inference (``encode_image`` / ``encode_text``) is exactly plain CLIP on the same towers.
When a training objective needs them (``output_tokens = True``), the dict ``forward`` returns
in training mode also holds the image patch tokens and the text tower's per-position outputs.
"""
import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .numerics import reads_values
from .registry import register_model_class
from .towers import TimmCNNTower, build_text_tower

__all__ = ["LightCLIP", "text_word_mask"]

def text_word_mask(text: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """True at real word positions of CLIP-tokenized text: not SOT (position 0), EOT or padding.

    The EOT token is the largest id of each row (OpenCLIP's ``argmax`` pooling relies on the same).
    """
    positions = torch.arange(text.shape[1], device=text.device)
    eot = text.argmax(dim=-1, keepdim=True)
    return (positions > 0) & (positions < eot) & (text != pad_id)


@register_model_class("LightCLIP")
class LightCLIP(nn.Module):
    """CLIP with a timm CNN image tower (``visual``) and OpenCLIP's text transformer (``text``).

    Args mirror ``open_clip.CLIP``; ``vision_cfg`` holds ``TimmCNNTower`` arguments.
    """

    output_dict: bool

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: dict,
            text_cfg: dict,
            quick_gelu: bool = False,
            init_logit_scale: float = np.log(1 / 0.07),
            init_logit_bias: Optional[float] = None,
            nonscalar_logit_scale: bool = False,
            cast_dtype: Optional[torch.dtype] = None,
            output_dict: bool = False,
    ):
        super().__init__()
        self.output_dict = output_dict
        self.output_tokens = False  # set by objectives that need patch / word tokens
        self.trim_text = True  # training forward: cut each batch after its longest caption (exact, see forward_text)
        self.visual = TimmCNNTower(embed_dim=embed_dim, **vision_cfg)
        self.text = build_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype)
        self.context_length = self.text.context_length
        self.vocab_size = self.text.vocab_size
        lshape = [1] if nonscalar_logit_scale else []
        self.logit_scale = nn.Parameter(torch.ones(lshape) * init_logit_scale)
        self.logit_bias = nn.Parameter(torch.ones(lshape) * init_logit_bias) if init_logit_bias is not None else None

    # --- upstream CLIP API ---------------------------------------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers, freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"text." + n for n in self.text.no_weight_decay()}

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features, _ = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def text_trim_is_exact(self) -> bool:
        """Positions after the last EOT can't change earlier outputs: causal mask, EOT (argmax) pooling."""
        t = self.text
        return (t.attn_mask is not None and t.cls_emb is None and not t.use_pad_mask
                and t.pool_type == "argmax")

    def forward_text(self, text: torch.Tensor, trim: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pooled, projected text features (B, D) and per-position outputs (B, L, W).

        ``trim``: run the tower only up to the batch's longest caption (last EOT) and pad the
        per-position outputs back to L with zeros. With CLIP's causal mask and EOT pooling the
        results are identical; the cost of the text tower drops with the caption length.
        """
        length = self.trimmed_length(text) if trim else text.shape[1]
        return self._forward_text(text, length)

    def trimmed_length(self, text: torch.Tensor) -> int:
        """Positions the text tower must run: up to the batch's last EOT when that is exact and reading the
        batch is free (CPU tensors, :func:`~.host_sync.reads_values`), else all."""
        if not self.text_trim_is_exact() or not reads_values(text):
            return text.shape[1]
        return int(text.argmax(dim=-1).max()) + 1

    def _forward_text(self, text: torch.Tensor, length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        full_length = text.shape[1]
        if length == full_length:
            return self.text(text)
        from open_clip.transformer import text_global_pool

        tower = self.text
        text = text[:, :length]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(text).to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = tower.ln_final(x)
        pooled = text_global_pool(x, text, tower.pool_type)
        if tower.text_projection is not None:
            if isinstance(tower.text_projection, nn.Linear):
                pooled = tower.text_projection(pooled)
            else:
                pooled = pooled @ tower.text_projection
        return pooled, F.pad(x, (0, 0, 0, full_length - length))

    def get_logits(self, image: torch.Tensor, text: torch.Tensor):
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        image_logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            image_logits += self.logit_bias
        return image_logits, image_logits.T

    # --- training ------------------------------------------------------------------------
    def add_train_heads(self, cfg) -> None:
        """Attach LightCLIP's training-only heads (``lightclip_train``) and emit tokens in training."""
        from .train_heads import LightCLIPTrainHeads

        self.lightclip_train = LightCLIPTrainHeads(
            cfg,
            image_token_dim=self.visual.token_dim,
            text_width=self.text.width,
            text_heads=self.text.heads,
            text_layers=len(self.text.transformer.resblocks),
            vocab_size=self.text.vocab_size,
        )
        self.output_tokens = True

    def forward_train(self, image: torch.Tensor, text: torch.Tensor, mlm_mask=None) -> Dict[str, torch.Tensor]:
        """Embeddings plus what the training objectives need.

        Without ``lightclip_train``: raw ``image_tokens`` (B, H*W, C), ``text_tokens`` (B, L, W)
        and ``text_mask`` (B, L, bool: real words). With it: the tokens are projected and
        L2-normalised, and the MLM pass adds ``mlm_loss_sum`` / ``mlm_count`` (B,).
        ``mlm_mask`` fixes the masking (see ``train_heads.mask_tokens``), e.g. in tests.
        """
        image_features, image_tokens = self.visual.forward_tokens(image)
        length = self.trimmed_length(text) if self.trim_text else text.shape[1]  # once for both text passes
        text_features, text_tokens = self._forward_text(text, length)
        word_mask = text_word_mask(text, self.text.pad_id)
        out = {
            "image_features": F.normalize(image_features, dim=-1),
            "text_features": F.normalize(text_features, dim=-1),
            "text_mask": word_mask,
        }
        heads = getattr(self, "lightclip_train", None)
        if heads is None:
            out.update(image_tokens=image_tokens, text_tokens=text_tokens)
            return out
        if heads.cfg.token:
            out["image_tokens"], out["text_tokens"] = heads.project_tokens(image_tokens, text_tokens)
            if hasattr(heads, "token_logit_scale"):  # the token term's own temperature, clamped like CLIP's:
                with torch.no_grad():  # in place, as the trainer clamps logit_scale after each step (a clamp in
                    heads.token_logit_scale.clamp_(max=math.log(100))  # the graph would stop its gradient for good)
                # per sample (B,), like every output the trainer concatenates under --accum-freq
                out["token_logit_scale"] = heads.token_logit_scale.exp().expand(len(text))
        if heads.cfg.mlm:
            if mlm_mask is not None:
                mlm_mask = tuple(m[:, :length] for m in mlm_mask)
            out.update(heads.mlm(self.text, text[:, :length], word_mask[:, :length], image_tokens, mlm_mask))
        return out

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if self.output_dict and self.output_tokens and self.training and image is not None and text is not None:
            out = self.forward_train(image, text)
        else:
            trim = self.training and self.trim_text
            out = {
                "image_features": self.encode_image(image, normalize=True) if image is not None else None,
                "text_features": F.normalize(self.forward_text(text, trim)[0], dim=-1) if text is not None else None,
            }
        if self.output_dict:
            out["logit_scale"] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return out["image_features"], out["text_features"], self.logit_scale.exp(), self.logit_bias
        return out["image_features"], out["text_features"], self.logit_scale.exp()
