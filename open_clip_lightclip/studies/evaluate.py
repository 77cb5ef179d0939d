"""Held-out evaluation of a trainer checkpoint: image<->text recall@k and zero-shot classification."""
from typing import Dict

__all__ = ["IGNORED_CATEGORIES", "CLIPART_TEMPLATES", "FASHION_TEMPLATES", "recall_at_k", "load_eval_data",
           "evaluate_checkpoint"]

# categories that are not about what is in the picture
IGNORED_CATEGORIES = {"unsorted", "special", "misc", "miscellaneous", "other"}
CLIPART_TEMPLATES = ("{}.", "a clip art of {}.", "a drawing of {}.", "an illustration of {}.")
FASHION_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a product photo of a {}.")


def _encode_images(model, preprocess, images, batch_size: int = 256):
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(im) for im in images[i:i + batch_size]])
            feats.append(torch.nn.functional.normalize(model.encode_image(batch), dim=-1))
    return torch.cat(feats)


def _encode_texts(model, tokenizer, texts, batch_size: int = 512):
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            feats.append(torch.nn.functional.normalize(model.encode_text(tokenizer(texts[i:i + batch_size])), dim=-1))
    return torch.cat(feats)


def _classifier(model, tokenizer, classnames, templates):
    import torch

    weights = []
    for c in classnames:
        e = _encode_texts(model, tokenizer, [t.format(c) for t in templates]).mean(0)
        weights.append(e / e.norm())
    return torch.stack(weights)


def recall_at_k(sim, ks=(1, 5, 10)) -> dict:
    """Recall@k of a square similarity matrix whose diagonal holds the pairs; exact ties do not count against."""

    ranks = (sim > sim.diag().unsqueeze(1)).sum(1)  # how many candidates score above the true pair
    return {k: (ranks < k).float().mean().item() for k in ks}


def load_eval_data(info: dict, fashion_samples: int, fashion_dir=None) -> dict:
    from ..data.shards import read_shard_samples
    from ..data.sources import FASHION_MNIST_ROOT, fashion_mnist

    images, captions, cats = [], [], []
    for _, im, cap, meta in read_shard_samples(info["heldout_data"]):
        images.append(im)
        captions.append(cap)
        cats.append(meta.get("category"))
    counts: Dict[str, int] = {}
    for c in cats:
        if c and c.lower() not in IGNORED_CATEGORIES:
            counts[c] = counts.get(c, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= 3)
    data = {"images": images, "captions": captions, "categories": cats, "classes": classes}
    if fashion_samples:
        from PIL import Image

        fm_images, fm_labels, fm_classes = fashion_mnist("test", fashion_dir or FASHION_MNIST_ROOT)
        data["fashion"] = ([Image.fromarray(a).convert("RGB") for a in fm_images[:fashion_samples]],
                           fm_labels[:fashion_samples], fm_classes)
    return data


def evaluate_checkpoint(model_name: str, checkpoint: str, image_size: int, data: dict) -> dict:
    import open_clip
    import torch

    from ..data.sources import clean_text

    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=checkpoint, force_image_size=image_size)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    img = _encode_images(model, preprocess, data["images"])
    txt = _encode_texts(model, tokenizer, data["captions"])
    sim = img @ txt.T
    out = {"heldout_images": len(data["images"])}
    for k, v in recall_at_k(sim).items():
        out[f"i2t_R@{k}"] = v
    for k, v in recall_at_k(sim.T).items():
        out[f"t2i_R@{k}"] = v
    if data["classes"]:
        keep = [i for i, c in enumerate(data["categories"]) if c in data["classes"]]
        labels = torch.tensor([data["classes"].index(data["categories"][i]) for i in keep])
        w = _classifier(model, tokenizer, [clean_text(c) for c in data["classes"]], CLIPART_TEMPLATES)
        pred = (img[keep] @ w.T).argmax(1)
        out["clipart_zeroshot"] = (pred == labels).float().mean().item()
        out["clipart_classes"] = len(data["classes"])
        out["clipart_images"] = len(keep)
    if "fashion" in data:
        f_images, f_labels, f_classes = data["fashion"]
        f_img = _encode_images(model, preprocess, f_images)
        w = _classifier(model, tokenizer, list(f_classes), FASHION_TEMPLATES)
        pred = (f_img @ w.T).argmax(1)
        out["fashion_mnist_zeroshot"] = (pred == torch.as_tensor(f_labels)).float().mean().item()
        out["fashion_mnist_images"] = len(f_images)
    return out
