"""Runs ``open_clip_train.main.main(argv)`` (what ``python -m open_clip_train.main`` runs) and,
after the last epoch, saves the in-memory model's eval-mode embeddings of fixed inputs to
$EMBED_OUT, so a test can compare them with a model reloaded from the checkpoint."""
import os
import sys

import torch

import open_clip_train.main as trainer_main

_train_one_epoch = trainer_main.train_one_epoch


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
    _train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=tb_writer)
    if epoch + 1 == args.epochs:
        inner = model.module if hasattr(model, "module") else model
        inner.eval()
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(3, 3, 64, 64, generator=gen)
        texts = torch.randint(1, 49000, (3, inner.context_length), generator=gen)
        with torch.no_grad():
            out = {"image": inner.encode_image(images), "text": inner.encode_text(texts),
                   "images": images, "texts": texts}
        torch.save(out, os.environ["EMBED_OUT"])
        inner.train()


trainer_main.train_one_epoch = train_one_epoch
trainer_main.main(sys.argv[1:])
