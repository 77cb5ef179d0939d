"""Train the reinforced-data study's CoCa captioner on the clip-art shards with the real OpenCLIP trainer, then
write it as an OpenCLIP ``local-dir:`` folder for ``open-clip-lightclip reinforce --captioner local-dir:OUT``.

    python docs/ablation/reinforce/train_captioner.py OUT -- --train-data 'D/train-{00000..00003}.tar' ...

Everything after ``--`` goes to ``open_clip_train.main`` (the model is this folder's ``coca-tiny.json``, registered
in-process as ``coca-tiny``; upstream's CoCa loss, caption weight 2, contrastive weight 1 unless given).
"""
import json
import shutil
import sys
from pathlib import Path

import open_clip
import torch

HERE = Path(__file__).resolve().parent


def main(argv):
    out, trainer_args = Path(argv[0]), argv[argv.index("--") + 1:]
    if out.exists():
        sys.exit(f"error: {out} exists; choose another folder (nothing was overwritten)")
    config = HERE / "coca-tiny.json"
    staging = Path(trainer_args[trainer_args.index("--logs") + 1]) / "coca-config"
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, staging / "coca-tiny.json")
    open_clip.add_model_config(staging)
    from open_clip_train.main import main as train

    defaults = {"--coca-caption-loss-weight": "2", "--coca-contrastive-loss-weight": "1"}
    given = [a for flag, value in defaults.items() if flag not in trainer_args for a in (flag, value)]
    train(["--model", "coca-tiny", *given, *trainer_args])
    logs = Path(trainer_args[trainer_args.index("--logs") + 1]) / trainer_args[trainer_args.index("--name") + 1]
    last = max((logs / "checkpoints").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    state = {k.removeprefix("module."): v for k, v in torch.load(last, map_location="cpu")["state_dict"].items()}
    out.mkdir(parents=True)
    cfg = json.loads(config.read_text())
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "size": cfg["vision_cfg"]["image_size"], "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD)}}, indent=1))
    torch.save(state, out / "open_clip_pytorch_model.bin")
    print(f"captioner: {out} (from {last})")


if __name__ == "__main__":
    main(sys.argv[1:])
