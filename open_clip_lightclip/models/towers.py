"""Image and text towers for lightweight CLIP models.

``TimmCNNTower`` wraps a timm CNN (MobileNetV3, EfficientNet, ...) and returns both the
pooled, projected image embedding and the last stage's feature map as patch tokens.
Unlike OpenCLIP's ``TimmModel`` it sizes the projection from what the trunk's head really
emits (``head_hidden_size``: 1280 for MobileNetV3-Large, not ``num_features`` = 960).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["TimmCNNTower", "build_text_tower"]


class TimmCNNTower(nn.Module):
    """timm CNN trunk + projection, with patch tokens from the last feature map.

    Args:
        timm_model_name: timm model name (e.g. ``mobilenetv3_large_100``).
        embed_dim: output embedding dimension.
        image_size: nominal input size (used for preprocessing; CNNs take any size).
        timm_model_pretrained: load timm's ImageNet weights (needs the hub).
        timm_pool: timm global pool type used before the head.
        timm_proj: ``linear``, ``mlp`` or ``none`` (identity; requires matching dims).
        timm_proj_bias: bias in the projection.
        timm_drop: dropout before the projection.
        timm_drop_path: stochastic depth rate of the trunk.
        timm_reparameterized: build the trunk in its fused (deploy) form: reparameterisable
            towers (MobileOne, FastViT / MobileCLIP's MCi, RepViT) trained with parallel branches,
            exported fused (``export`` writes this flag with the fused weights).
    """

    def __init__(
            self,
            timm_model_name: str,
            embed_dim: int,
            image_size: Union[int, Tuple[int, int]] = 224,
            timm_model_pretrained: bool = False,
            timm_pool: str = "avg",
            timm_proj: str = "linear",
            timm_proj_bias: bool = False,
            timm_drop: float = 0.0,
            timm_drop_path: Optional[float] = None,
            patch_dropout: float = 0.0,
            timm_reparameterized: bool = False,
    ):
        super().__init__()
        import timm

        if patch_dropout:
            raise ValueError(f"patch_dropout={patch_dropout} is not supported by CNN towers; drop --force-patch-dropout")
        kwargs = {} if timm_drop_path is None else {"drop_path_rate": timm_drop_path}
        self.trunk = timm.create_model(
            timm_model_name,
            pretrained=timm_model_pretrained,
            num_classes=0,
            global_pool=timm_pool,
            **kwargs,
        )
        self.reparameterized = False
        if timm_reparameterized:
            self.reparameterize()
        self.image_size = image_size
        self.token_dim = self.trunk.num_features  # channels of the last feature map
        self.pooled_dim = getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features
        self.drop = nn.Dropout(timm_drop)
        if timm_proj == "linear":
            self.proj = nn.Linear(self.pooled_dim, embed_dim, bias=timm_proj_bias)
        elif timm_proj == "mlp":
            hidden = 2 * embed_dim
            self.proj = nn.Sequential(
                nn.Linear(self.pooled_dim, hidden, bias=timm_proj_bias),
                nn.GELU(),
                nn.Linear(hidden, embed_dim, bias=timm_proj_bias),
            )
        elif timm_proj in ("none", "", None):
            if self.pooled_dim != embed_dim:
                raise ValueError(
                    f"timm_proj='none' needs embed_dim == {self.pooled_dim} (the trunk's output), got {embed_dim}")
            self.proj = nn.Identity()
        else:
            raise ValueError(f"unknown timm_proj {timm_proj!r}; use 'linear', 'mlp' or 'none'")
        self.output_dim = embed_dim

    @property
    def reparameterizable(self) -> bool:
        """True when the trunk has branches that fuse for inference (timm's ``reparameterize`` / ``fuse``)."""
        return not self.reparameterized and any(
            hasattr(m, "reparameterize") or hasattr(m, "fuse") for m in self.trunk.modules() if m is not self.trunk)

    def reparameterize(self) -> bool:
        """Fuse the trunk's training-time branches in place (timm's ``reparameterize_model``; Ding et al.,
        RepVGG; MobileOne; FastViT). Inference-only: call it on a model in eval mode. True if anything fused."""
        from timm.utils.model import reparameterize_model

        changed = self.reparameterizable
        if changed:
            self.trunk = reparameterize_model(self.trunk, inplace=True)
        self.reparameterized = True
        return changed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage feature map, (B, C, H, W)."""
        return self.trunk.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool (and the trunk's own head convs, e.g. MobileNetV3's conv_head), then project."""
        pooled = self.trunk.forward_head(features, pre_logits=True)
        return self.proj(self.drop(pooled))

    def forward_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Projected embedding (B, D) and patch tokens (B, H*W, C) of the same pass, whatever layout the trunk
        emits: NCHW maps (timm's CNNs), NHWC maps (``output_fmt == "NHWC"``) or token sequences (B, N, C) whose
        ``num_prefix_tokens`` (class / register tokens) are dropped."""
        features = self.forward_features(x)
        if features.dim() == 3:
            tokens = features[:, getattr(self.trunk, "num_prefix_tokens", 0):]
        elif str(getattr(self.trunk, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC"):
            tokens = features.flatten(1, 2)
        else:
            tokens = features.flatten(2).transpose(1, 2)
        return self.forward_head(features), tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_input_size(self, image_size: Union[int, Tuple[int, int]]) -> None:
        """CNNs take any size; only the preprocessing size changes."""
        self.image_size = image_size

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the trunk (LiT), leaving the last ``unlocked_groups`` timm groups and the projection trainable."""
        from timm.layers import freeze_batch_norm_2d
        from timm.models import group_modules, group_parameters

        if not unlocked_groups:
            for param in self.trunk.parameters():
                param.requires_grad = False
            if freeze_bn_stats:
                freeze_batch_norm_2d(self.trunk)
            return
        matcher = self.trunk.group_matcher()
        gparams = group_parameters(self.trunk, matcher)
        max_layer_id = max(gparams.keys()) - unlocked_groups
        for group_idx in range(max_layer_id + 1):
            for name in gparams.get(group_idx, []):
                self.trunk.get_parameter(name).requires_grad = False
        if freeze_bn_stats:
            gmodules = group_modules(self.trunk, matcher, reverse=True)
            freeze_batch_norm_2d(self.trunk, {k for k, v in gmodules.items() if v <= max_layer_id})

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


def build_text_tower(embed_dim: int, text_cfg: dict, quick_gelu: bool = False, cast_dtype=None) -> nn.Module:
    """OpenCLIP's ``TextTransformer``, built to also return its per-position outputs."""
    from open_clip.model import CLIPTextCfg, _build_text_tower

    cfg = CLIPTextCfg(**text_cfg) if isinstance(text_cfg, dict) else text_cfg
    if cfg.hf_model_name:
        raise ValueError("LightCLIP models use OpenCLIP's own TextTransformer; remove hf_model_name from text_cfg")
    cfg.output_tokens = True
    return _build_text_tower(embed_dim, cfg, quick_gelu, cast_dtype)
