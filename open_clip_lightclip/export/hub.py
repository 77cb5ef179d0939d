"""Hugging Face Hub: the model card (``README.md``) of an exported model, and ``--push`` through upstream.

The card has the Hub's metadata block (``library_name: open_clip``, license, tags, pipeline), the
architecture, parameters and MB per tower, the training data and objective read from the run's
``params.txt``, the held-out metrics the run logged (``checkpoints/results.jsonl``), how to load it,
and citations. ``push`` calls upstream's ``open_clip.push_to_hf_hub`` with the exported model.
"""
import importlib
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

__all__ = ["CARD_NAME", "HubError", "card_metadata", "front_matter", "held_out_metrics", "model_card", "push", "tower_sizes"]

CARD_NAME = "README.md"
CITATIONS = (
    """@article{nie2023lightclip,
  title={LightCLIP: Learning Multi-Level Interaction for Lightweight Vision-Language Models},
  author={Nie, Ying and He, Wei and Han, Kai and Tang, Yehui and Guo, Tianyu and Du, Fanyi and Wang, Yunhe},
  journal={arXiv preprint arXiv:2312.00674},
  year={2023}
}""",
    """@article{shrivastava2021cliplite,
  title={CLIP-Lite: Information Efficient Visual Representation Learning with Language Supervision},
  author={Shrivastava, Aman and Selvaraju, Ramprasaath R. and Naik, Nikhil and Ordonez, Vicente},
  journal={arXiv preprint arXiv:2112.07133},
  year={2021}
}""",
    """@software{ilharco_gabriel_2021_5143773,
  author={Ilharco, Gabriel and Wortsman, Mitchell and Wightman, Ross and Gordon, Cade and Carlini, Nicholas and
          Taori, Rohan and Dave, Achal and Shankar, Vaishaal and Namkoong, Hongseok and Miller, John and
          Hajishirzi, Hannaneh and Farhadi, Ali and Schmidt, Ludwig},
  title={OpenCLIP},
  year={2021},
  publisher={Zenodo},
  doi={10.5281/zenodo.5143773},
  url={https://doi.org/10.5281/zenodo.5143773}
}""",
)
_OBJECTIVES = {
    "lightclip": "LightCLIP (Nie et al., 2023): contrastive loss with progressively softened labels, word-patch "
                 "alignment by relaxed bipartite matching, and masked language modelling with image fusion "
                 "(the extra modules are training-only)",
    "cliplite": "CLIP-Lite (Shrivastava et al., 2021): Jensen-Shannon mutual-information bound with one negative "
                "per positive",
    "clip": "CLIP's symmetric InfoNCE contrastive loss",
    "siglip": "SigLIP's pairwise sigmoid loss",
}
_TRAINING_KEYS = ("train_data", "dataset_type", "train_num_samples", "epochs", "batch_size", "world_size", "lr",
                  "wd", "warmup", "precision", "force_image_size", "seed")


class HubError(RuntimeError):
    """Publishing cannot proceed; the message is one line."""


def tower_sizes(model: nn.Module) -> Dict[str, Tuple[int, float]]:
    """``{tower: (parameters, MB in the weights file)}`` of a stock ``CLIP`` (``visual``, ``text``: the rest)."""
    sizes: Dict[str, List[float]] = {"image": [0, 0.0], "text": [0, 0.0]}
    for name, tensor in model.state_dict().items():
        if name in ("logit_scale", "logit_bias"):
            continue
        tower = "image" if name.startswith("visual.") else "text"
        if not name.endswith("num_batches_tracked") and "running_" not in name and name != "attn_mask":
            sizes[tower][0] += tensor.numel()
        sizes[tower][1] += tensor.numel() * tensor.element_size() / 1e6
    return {k: (int(v[0]), v[1]) for k, v in sizes.items()}


def held_out_metrics(checkpoint: Optional[Path]) -> Dict[str, float]:
    """The last evaluation the run logged next to ``checkpoint`` (``checkpoints/results.jsonl``), numbers only."""
    if checkpoint is None:
        return {}
    results = Path(checkpoint).resolve().parent / "results.jsonl"
    if not results.is_file():
        return {}
    last = {}
    for line in results.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            last = row
    return {k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def card_metadata(model_cfg: dict, license: str = "mit") -> dict:
    """The Hub's metadata block (YAML front matter) as a dict."""
    tags = ["clip", "open_clip", "lightclip", "zero-shot-image-classification"]
    timm_name = model_cfg.get("vision_cfg", {}).get("timm_model_name")
    if timm_name:
        tags.append(f"timm:{timm_name}")
    return {"library_name": "open_clip", "license": license, "pipeline_tag": "zero-shot-image-classification",
            "tags": tags}


def front_matter(meta: dict) -> str:
    """``meta`` as the YAML block the Hub reads at the top of ``README.md``."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines.extend(f"- {v}" for v in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", ""])


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(
        model: nn.Module,
        model_cfg: dict,
        model_name: str,
        repo_id: Optional[str] = None,
        params: Optional[dict] = None,
        metrics: Optional[Dict[str, float]] = None,
        license: str = "mit",
        notes: Tuple[str, ...] = (),
        with_metadata: bool = True,
) -> str:
    """The ``README.md`` of an exported stock model (``with_metadata=False``: the body only)."""
    params, metrics = params or {}, metrics or {}
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    sizes = tower_sizes(model)
    image_size = vision.get("image_size", 224)
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    out = [f"# {repo_id.split('/')[-1] if repo_id else model_name}", "",
           f"A lightweight CLIP model ({model_name}) trained with "
           f"[open-clip-lightclip](https://pypi.org/project/open-clip-lightclip/) and exported as a plain "
           f"[OpenCLIP](https://github.com/mlfoundations/open_clip) model: it loads with `open_clip` alone.", "",
           "## Architecture", "",
           "| tower | architecture | parameters | MB (fp32 weights) |", "|---|---|---:|---:|",
           f"| image | timm `{vision.get('timm_model_name')}` at {image_size} px, the trunk's classifier as the "
           f"{model_cfg.get('embed_dim')}-d projection | {sizes['image'][0]:,} | {sizes['image'][1]:.1f} |",
           f"| text | {text.get('layers', 12)}-layer transformer, width {text.get('width', 512)}, "
           f"{text.get('heads', 8)} heads, context {text.get('context_length', 77)} | {sizes['text'][0]:,} | "
           f"{sizes['text'][1]:.1f} |",
           f"| total | embedding dimension {model_cfg.get('embed_dim')} | {sizes['image'][0] + sizes['text'][0]:,} | "
           f"{sizes['image'][1] + sizes['text'][1]:.1f} |", ""]
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    out += ["## Training", ""]
    if params:
        loss = str(params.get("loss") or "clip")
        out.append(f"- **Objective:** `--loss {loss}`: {_OBJECTIVES.get(loss, loss)}")
        weights = {k: v for k, v in params.items()
                   if k.startswith(("lightclip_", "cliplite_", "distill_")) and v not in (None, False, "")}
        if weights:
            out.append("- **Objective settings:** " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in sorted(weights.items())))
        for key in _TRAINING_KEYS:
            if params.get(key) not in (None, ""):
                out.append(f"- **{key.replace('_', ' ')}:** `{_fmt(params[key])}`")
    else:
        out.append("- No `params.txt` of the trainer run was found next to the checkpoint: training data and "
                   "objective unknown.")
    out += ["", "## Held-out evaluation", ""]
    if metrics:
        out += ["| metric | value |", "|---|---:|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        out.append("The run logged no evaluation (`checkpoints/results.jsonl`): no metrics are claimed here.")
    out += ["", "## How to use", "", "```python",
            "import open_clip, torch",
            f"model, _, preprocess = open_clip.create_model_and_transforms('{where}')",
            f"tokenizer = open_clip.get_tokenizer('{where}')",
            "image, text = preprocess(pil_image).unsqueeze(0), tokenizer(['a diagram', 'a dog', 'a cat'])",
            "probs = (100 * model.encode_image(image, normalize=True) @ "
            "model.encode_text(text, normalize=True).T).softmax(dim=-1)",
            "```", "", "## Citation", ""]
    for citation in CITATIONS:
        out += ["```bibtex", citation, "```", ""]
    body = "\n".join(out)
    return (front_matter(card_metadata(model_cfg, license)) + body) if with_metadata else body


def push(out_dir, repo_id: str, card_body: str, metadata: dict, token: Optional[str] = None,
         private: bool = False, log=print) -> object:
    """Upload the exported model in ``out_dir`` with upstream's ``open_clip.push_to_hf_hub`` (weights as
    safetensors, its config, tokenizer files and, when the repo has no README yet, this card).

    OpenCLIP 3.3.0's push module imports ``repo_type_and_id_from_hf_id``, which huggingface_hub 1.x / 2.x no
    longer has, so its push is unusable there; then the folder itself (card included) is uploaded with
    huggingface_hub's ``create_repo`` + ``upload_folder``, the calls upstream's push makes."""
    import open_clip

    upstream = sys.modules.get("open_clip.push_to_hf_hub") or importlib.import_module("open_clip.push_to_hf_hub")
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("--push needs huggingface_hub: pip install huggingface_hub") from None
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError("--push needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")
    out_dir = Path(out_dir)
    if not getattr(upstream, "_has_hf_hub", False):
        log(f"open_clip.push_to_hf_hub cannot run with huggingface_hub {huggingface_hub.__version__} (OpenCLIP "
            "3.3.0 imports names it no longer has): uploading the folder with create_repo + upload_folder")
        huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
        return huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(out_dir), token=token,
                                             commit_message="Add model (open-clip-lightclip export)",
                                             ignore_patterns=[".open-clip-lightclip-files.json"])
    model_cfg = json.loads((out_dir / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.create_model(f"local-dir:{out_dir}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out_dir}")
    card = {"description": card_body, "license": metadata.get("license", "mit"), "tags": metadata.get("tags")}
    return upstream.push_to_hf_hub(model=model, tokenizer=tokenizer, model_config=model_cfg, repo_id=repo_id,
                                   token=token, private=private, model_card=card, safe_serialization=True,
                                   commit_message="Add model (open-clip-lightclip export)")
