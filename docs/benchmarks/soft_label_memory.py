"""Peak memory growth of the soft-label instance term's forward + backward at B x B logits: plain InfoNCE (what
ClipLoss computes), the dense soft targets used before, the closed forms. Run each kind in a fresh process:

    for k in clip old closed closed-similarity; do OMP_NUM_THREADS=1 python docs/benchmarks/soft_label_memory.py $k 4096; done
"""
import sys

import torch
import torch.nn.functional as F

from open_clip_lightclip.benchmarks._train_steps import measure_peak
from open_clip_lightclip.losses.lightclip import soft_label_ce



def old_soft_targets(logits, labels, eps, spread="uniform"):
    positive = F.one_hot(labels, logits.shape[1]).bool()
    weights = (~positive).to(logits.dtype) / max(logits.shape[1] - 1, 1)
    return torch.where(positive, 1.0 - eps, eps * weights)



kind, b = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
img = F.normalize(torch.randn(b, 256), dim=-1).requires_grad_()
txt = F.normalize(torch.randn(b, 256), dim=-1).requires_grad_()
labels = torch.arange(b)


def run():
    logits = 100 * img @ txt.T
    if kind == "old":
        loss = (F.cross_entropy(logits, old_soft_targets(logits, labels, 0.1))
                + F.cross_entropy(logits.T, old_soft_targets(logits.T, labels, 0.1))) / 2
    elif kind == "closed":
        loss = (soft_label_ce(logits, labels, 0.1) + soft_label_ce(logits.T, labels, 0.1)) / 2
    elif kind == "closed-similarity":
        loss = (soft_label_ce(logits, labels, 0.1, "similarity") + soft_label_ce(logits.T, labels, 0.1, "similarity")) / 2
    else:
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()


print(f"{kind} B={b}: peak growth {measure_peak(run, torch.device('cpu')):.0f} MiB (logits {b*b*4/2**20:.0f} MiB)")
