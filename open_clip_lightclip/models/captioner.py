"""Synthetic captions from an OpenCLIP CoCa captioner (MobileCLIP's dataset reinforcement: several
captions per image from a CoCa model, stored next to the real one).

:func:`build_captioner` loads any OpenCLIP CoCa model and weights (``MODEL=WEIGHTS``, ``local-dir:``,
``hf-hub:``) and refuses anything that is not CoCa in one line. :meth:`Captioner.caption` decodes with
nucleus sampling (Holtzman et al., 2020) in plain PyTorch on the captioner's own logits: OpenCLIP 3.3's
``CoCa.generate`` needs ``transformers`` < 5 (it imports ``BeamSearchScorer``, gone from
``transformers`` 5) and draws from the global RNG; here every draw comes from a seeded generator, so a
rerun writes the same captions. Settings (:class:`DecodeSettings`): ``top_p`` 0.9, temperature 1.0,
5 to 30 tokens (start and end tokens included), repetition penalty 1.0 (off).
"""
from dataclasses import asdict, dataclass
from typing import List, Sequence

import torch
import torch.nn as nn

from .teachers import TeacherError, decode_tokens, parse_teacher

__all__ = ["DecodeSettings", "Captioner", "build_captioner"]


@dataclass(frozen=True)
class DecodeSettings:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``."""

    top_p: float = 0.9
    temperature: float = 1.0
    min_tokens: int = 5
    max_tokens: int = 30
    repetition_penalty: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


class Captioner(nn.Module):
    """A frozen CoCa model, its tokenizer and its inference transform."""

    def __init__(self, model: nn.Module, tokenizer, transform, name: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.transform, self.name = tokenizer, transform, name
        self.sot = int(getattr(tokenizer, "sot_token_id", 49406))
        self.eot = int(getattr(tokenizer, "eot_token_id", 49407))
        self.context_length = int(getattr(tokenizer, "context_length", 77))

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def caption(self, pil_images, num: int, generators: Sequence[torch.Generator],
                settings: DecodeSettings = DecodeSettings()) -> List[List[str]]:
        """``num`` sampled captions per image (its own inference transform), as ``[image][caption]``; image ``i``'s
        tokens are drawn from ``generators[i]`` alone, so its captions do not depend on the batch around it."""
        if len(generators) != len(pil_images):
            raise ValueError(f"caption: {len(pil_images)} images need as many generators, got {len(generators)}")
        if not pil_images or num < 1:
            return [[] for _ in pil_images]
        dtype = next(self.model.parameters()).dtype
        images = torch.stack([self.transform(im) for im in pil_images]).to(self.device, dtype)
        latent, embs = self.model._encode_image(images)
        latent, embs = latent.repeat_interleave(num, 0), embs.repeat_interleave(num, 0)
        rows = latent.shape[0]
        out = torch.full((rows, 1), self.sot, dtype=torch.long, device=self.device)
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        max_tokens = min(settings.max_tokens, self.context_length)
        for length in range(1, max_tokens):
            logits = self.model(images, out, image_latent=latent, image_embs=embs, output_labels=False)["logits"]
            logits = logits[:, -1].float() / settings.temperature
            if settings.repetition_penalty != 1.0:
                seen = logits.gather(1, out)
                seen = torch.where(seen < 0, seen * settings.repetition_penalty, seen / settings.repetition_penalty)
                logits = logits.scatter(1, out, seen)
            if length + 1 < settings.min_tokens:
                logits[:, self.eot] = float("-inf")
            if length + 1 == max_tokens:  # the last position ends the caption
                nxt = torch.full((rows,), self.eot, dtype=torch.long, device=self.device)
            else:
                probs = logits.softmax(-1)
                if not bool(torch.isfinite(probs).all()):  # a host read, per token of an offline tool
                    raise TeacherError(f"captioner {self.name!r}: non-finite next-token probabilities at token "
                                       f"{length} (its weights or inputs hold NaN / inf); check the captioner")
                sorted_p, order = probs.sort(dim=-1, descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p >= settings.top_p  # keeps at least the most likely token
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                host = sorted_p.cpu()
                pick = torch.cat([torch.multinomial(host[i * num:(i + 1) * num], 1, generator=g)
                                  for i, g in enumerate(generators)]).to(self.device)
                nxt = order.gather(1, pick).squeeze(1)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)  # 0 pads a finished caption
            out = torch.cat([out, nxt[:, None]], dim=1)
            done = done | (nxt == self.eot)
            if bool(done.all()):
                break
        texts = decode_tokens(self.tokenizer, out.cpu())
        return [texts[i * num:(i + 1) * num] for i in range(len(pil_images))]


def build_captioner(spec: str, device="cpu", precision: str = "fp32") -> Captioner:
    """A frozen :class:`Captioner` from ``MODEL=WEIGHTS`` (``coca_ViT-L-14=mscoco_finetuned_laion2b_s13b_b90k``,
    a checkpoint path, ``local-dir:`` / ``hf-hub:``); :class:`TeacherError` in one line otherwise."""
    import open_clip
    from open_clip.coca_model import CoCa

    from .teachers import _LOAD_ERRORS, _first, check_teacher_spec, run_settings

    error = check_teacher_spec(spec)
    if error:
        raise TeacherError(error.replace("teacher", "captioner", 1))
    name, weights = parse_teacher(spec)
    try:
        model, _, transform = open_clip.create_model_and_transforms(name, pretrained=weights, precision=precision,
                                                                    device=device, **run_settings(name, weights))
    except _LOAD_ERRORS as e:
        raise TeacherError(f"captioner {spec!r}: cannot load it ({_first(e)}); check the model name and the "
                           "weights") from e
    if not isinstance(model, CoCa):
        raise TeacherError(f"captioner {spec!r}: {type(model).__name__} is not a CoCa model (it has no text decoder); "
                           "name an OpenCLIP CoCa model, e.g. coca_ViT-L-14=mscoco_finetuned_laion2b_s13b_b90k")
    return Captioner(model, open_clip.get_tokenizer(name), transform, spec)
