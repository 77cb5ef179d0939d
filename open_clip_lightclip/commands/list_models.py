"""``open-clip-lightclip list-models``."""
import argparse
import logging
from typing import List

COLUMNS = ["model", "image tower", "image size", "image params", "text params"]


def _image_tower(vision_cfg: dict) -> str:
    if vision_cfg.get("timm_model_name"):
        return vision_cfg["timm_model_name"]
    return f"ViT {vision_cfg.get('layers', '?')}x{vision_cfg.get('width', '?')}"


def _image_size(vision_cfg: dict) -> str:
    size = vision_cfg.get("image_size", 224)
    return str(size) if isinstance(size, int) else "x".join(map(str, size))


def model_row(name: str) -> List[str]:
    """Name, image tower, image size and image / text parameters (M) of one config, counted on a meta-device build
    (shapes only: no weights are allocated or initialised, no download)."""
    import open_clip
    import torch

    vision_cfg = open_clip.get_model_config(name)["vision_cfg"]
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are asked for
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, device="meta")
    finally:
        logging.disable(level)
    image = sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual."))
    text = sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias"))
    return [name, _image_tower(vision_cfg), _image_size(vision_cfg), f"{image / 1e6:.2f} M", f"{text / 1e6:.2f} M"]


def _print_table(rows: List[List[str]]) -> None:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cmd_list_models(args: argparse.Namespace) -> int:
    import open_clip

    names = [n for n in open_clip.list_models()
             if not args.plugin_only or open_clip.get_model_config(n).get("model_class")]
    if args.plugin_only:
        _print_table([model_row(n) for n in names])
    else:
        print("\n".join(names))
    return 0


def register(sub) -> None:
    p = sub.add_parser("list-models", help="list the model configs OpenCLIP knows")
    p.add_argument("--plugin-only", action="store_true",
                   help="only this package's configs, as a table: image tower, image size, image / text parameters "
                        "(counted on a meta-device build: shapes only, no weights, about 0.2 s a config)")
    p.set_defaults(func=_cmd_list_models)
