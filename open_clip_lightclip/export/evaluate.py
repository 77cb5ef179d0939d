"""Held-out evaluation with clip_benchmark's metrics, of any model with ``encode_image`` / ``encode_text``: a
PyTorch model (``ablate``'s checkpoints) or exported ONNX encoders run by onnxruntime (``bench inference
--onnx-dir``). It lives in ``export/`` so that ``studies/`` and ``benchmarks/`` share this one copy.

Image->text and text->image recall@1/5/10 on the held-out split
(``clip_benchmark.metrics.zeroshot_retrieval``) and zero-shot top-1 accuracy
(``clip_benchmark.metrics.zeroshot_classification``) over the held-out images' categories and,
when the Debian package is there, Fashion-MNIST's test split: the numbers ``clip_benchmark eval``
reports, computed in-process on the same images.
"""
from typing import Dict, Sequence

__all__ = ["IGNORED_CATEGORIES", "CLIPART_TEMPLATES", "FASHION_TEMPLATES", "load_eval_data", "retrieval_metrics",
           "zeroshot_accuracy", "evaluate_model"]

# categories that are not about what is in the picture
IGNORED_CATEGORIES = {"unsorted", "special", "misc", "miscellaneous", "other"}
# clip_benchmark's template syntax: {c} is the class name
CLIPART_TEMPLATES = ("{c}.", "a clip art of {c}.", "a drawing of {c}.", "an illustration of {c}.")
FASHION_TEMPLATES = ("a photo of a {c}.", "a {c}.", "a picture of a {c}.", "a product photo of a {c}.")


class _Images:
    """A map-style dataset of preprocessed images with targets (``classes`` as clip_benchmark reads it)."""

    def __init__(self, images, targets, preprocess, classes: Sequence[str] = ()):
        self.images, self.targets, self.preprocess, self.classes = images, targets, preprocess, list(classes)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.preprocess(self.images[i]), self.targets[i]


def _loader(dataset, batch_size: int):
    import torch

    def collate(batch):
        images = torch.stack([b[0] for b in batch])
        targets = [b[1] for b in batch]
        return images, (targets if isinstance(targets[0], list) else torch.as_tensor(targets))

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def retrieval_metrics(model, preprocess, tokenizer, images, captions: Sequence[str], batch_size: int = 256,
                      ks=(1, 5, 10)) -> Dict[str, float]:
    """``i2t_R@k`` (clip_benchmark's text_retrieval_recall@k) and ``t2i_R@k`` (image_retrieval_recall@k)."""
    from clip_benchmark.metrics import zeroshot_retrieval

    dataset = _Images(images, [[c] for c in captions], preprocess)
    m = zeroshot_retrieval.evaluate(model, _loader(dataset, batch_size), tokenizer, "cpu", amp=False,
                                    recall_k_list=list(ks))
    out = {f"i2t_R@{k}": m[f"text_retrieval_recall@{k}"] for k in ks}
    out.update({f"t2i_R@{k}": m[f"image_retrieval_recall@{k}"] for k in ks})
    return out


def zeroshot_accuracy(model, preprocess, tokenizer, images, labels: Sequence[int], classnames: Sequence[str],
                      templates: Sequence[str], batch_size: int = 256) -> float:
    """Top-1 zero-shot accuracy (clip_benchmark's ``acc1``)."""
    from clip_benchmark.metrics import zeroshot_classification

    dataset = _Images(images, list(labels), preprocess, classnames)
    m = zeroshot_classification.evaluate(model, _loader(dataset, batch_size), tokenizer, list(classnames),
                                         list(templates), "cpu", amp=False)
    return m["acc1"]


def load_eval_data(heldout_data: str, fashion_samples: int = 0, fashion_dir=None) -> dict:
    """Held-out images, captions and categories (categories with >= 3 images become classes); Fashion-MNIST."""
    from ..data.shards import read_shard_samples
    from ..data.sources import FASHION_MNIST_ROOT, clean_text, fashion_mnist

    images, captions, cats = [], [], []
    for _, im, cap, meta in read_shard_samples(heldout_data):
        images.append(im)
        captions.append(cap)
        cats.append(meta.get("category"))
    counts: Dict[str, int] = {}
    for c in cats:
        if c and c.lower() not in IGNORED_CATEGORIES:
            counts[c] = counts.get(c, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= 3)
    data = {"images": images, "captions": captions, "categories": cats, "classes": classes,
            "classnames": [clean_text(c) for c in classes]}
    if fashion_samples:
        from PIL import Image

        fm_images, fm_labels, fm_classes = fashion_mnist("test", fashion_dir or FASHION_MNIST_ROOT)
        data["fashion"] = ([Image.fromarray(a).convert("RGB") for a in fm_images[:fashion_samples]],
                           [int(x) for x in fm_labels[:fashion_samples]], list(fm_classes))
    return data


def evaluate_model(model, preprocess, tokenizer, data: dict) -> dict:
    """Every metric the data allows: retrieval on the held-out pairs, zero-shot on categories / Fashion-MNIST."""
    out = {"heldout_images": len(data["images"])}
    out.update(retrieval_metrics(model, preprocess, tokenizer, data["images"], data["captions"]))
    if data["classes"]:
        keep = [i for i, c in enumerate(data["categories"]) if c in data["classes"]]
        out["clipart_zeroshot"] = zeroshot_accuracy(
            model, preprocess, tokenizer, [data["images"][i] for i in keep],
            [data["classes"].index(data["categories"][i]) for i in keep], data["classnames"], CLIPART_TEMPLATES)
        out["clipart_classes"], out["clipart_images"] = len(data["classes"]), len(keep)
    if "fashion" in data:
        f_images, f_labels, f_classes = data["fashion"]
        out["fashion_mnist_zeroshot"] = zeroshot_accuracy(model, preprocess, tokenizer, f_images, f_labels, f_classes,
                                                          FASHION_TEMPLATES)
        out["fashion_mnist_images"] = len(f_images)
    return out
