"""Which trainable parameters a loss reaches: a dry forward + backward, for every objective and distillation.

The seam freezes what a run's whole loss never reaches, so DDP trains without ``find_unused_parameters``
and nothing untrained moves under weight decay.
"""
import torch
import torch.nn as nn

__all__ = ["unused_parameters"]


def unused_parameters(model: nn.Module, loss: nn.Module, batch: int = 2, prepare_text=None) -> list:
    """Names of trainable parameters that no term of ``loss`` reaches (one dry forward + backward on dummy
    data; global RNG state, gradients and buffers such as BatchNorm statistics untouched): e.g. the pooled heads
    and projections when the instance term is off. ``prepare_text`` turns the dummy token ids into what the
    model's forward takes (e.g. packed with cached teacher embeddings)."""
    was_training, output_dict = model.training, getattr(model, "output_dict", False)
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    first = next(model.parameters())
    images = torch.randn(batch, 3, *size, generator=g).to(first.device, first.dtype)
    text = torch.randint(1, 400, (batch, model.context_length), generator=g).to(first.device)
    text[:, 0], text[:, 6], text[:, 7:] = model.text.vocab_size - 2, model.text.vocab_size - 1, 0  # SOT words EOT pad
    if prepare_text is not None:
        text = prepare_text(text)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.grad for n, p in params.items()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        model.train()
        model.output_dict = True
        for p in params.values():
            p.grad = None
        loss(**model(images, text)).backward()
        unused = [n for n, p in params.items() if p.grad is None]
    for n, p in params.items():
        p.grad = saved[n]
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    model.train(was_training)
    model.output_dict = output_dict
    return unused
