"""End-to-end runs of the real `python -m open_clip_train.main` on tiny generated shards."""
from pathlib import Path

import open_clip
import pytest
import torch

pytestmark = pytest.mark.slow
RUNNER = Path(__file__).with_name("train_and_embed.py")


def _state_dict(checkpoint):
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def test_trained_checkpoint_reloads_with_the_training_process_embeddings(train, tmp_path):
    embed_out = tmp_path / "embeddings.pt"
    _, ckpt_dir = train(model="LightCLIP-MNv3", loss="clip", extra=["--force-image-size", "64"],
                        runner=RUNNER, env={"EMBED_OUT": str(embed_out)})
    checkpoint = ckpt_dir / "epoch_1.pt"
    assert checkpoint.is_file()
    model, _, preprocess = open_clip.create_model_and_transforms(
        "LightCLIP-MNv3", pretrained=str(checkpoint), force_image_size=64)
    assert preprocess.transforms[0].size == 64
    model.eval()
    expected = torch.load(embed_out, weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(expected["images"]), expected["image"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_text(expected["texts"]), expected["text"], rtol=0, atol=1e-6)


def test_lock_image_and_grad_checkpointing_run(train):
    proc, ckpt_dir = train(extra=["--lock-image", "--grad-checkpointing", "--force-image-size", "64"])
    trained = _state_dict(ckpt_dir / "epoch_1.pt")
    torch.manual_seed(0)  # the trainer seeds with --seed 0 before building the model
    initial = open_clip.create_model("LightCLIP-Tiny").state_dict()
    trunk = [k for k in initial if k.startswith("visual.trunk.") and initial[k].is_floating_point()
             and "running_" not in k]
    assert trunk and all(torch.equal(trained[k], initial[k]) for k in trunk)
    assert not torch.equal(trained["visual.proj.weight"], initial["visual.proj.weight"])
    assert not torch.equal(trained["text.text_projection"], initial["text.text_projection"])


def test_accum_freq_2_run(train):
    proc, ckpt_dir = train(model="LightCLIP-MNv3", extra=["--accum-freq", "2", "--force-image-size", "64"])
    log = (ckpt_dir.parent / "out.log").read_text()
    assert "Contrastive_loss" in log and "[32/32 (100%)]" in log
    assert (ckpt_dir / "epoch_1.pt").is_file()


def test_siglip_loss_run_trains_logit_bias(train):
    _, ckpt_dir = train(loss="siglip", extra=["--force-image-size", "64"])
    trained = _state_dict(ckpt_dir / "epoch_1.pt")
    assert "logit_bias" in trained
    assert abs(trained["logit_bias"].item() + 10) < 1  # upstream's SigLIP init, -10, then a few steps


def test_without_loss_flag_trainer_is_upstream(train):
    _, ckpt_dir = train(loss=None, extra=["--force-image-size", "64"])
    log = (ckpt_dir.parent / "out.log").read_text()
    assert "Contrastive_loss" in log and "loss: None" in (ckpt_dir.parent / "params.txt").read_text()


def test_torchrun_with_logs_flag_trains(tiny_shards, tmp_path):
    """`torchrun ... -m open_clip_train.main --logs DIR` (torchrun's parser would call --logs ambiguous)."""
    import shutil

    from conftest import run_python
    from open_clip_lightclip.upstream.trainer_cmd import trainer_command

    torchrun = shutil.which("torchrun", path=str(Path(__import__("sys").executable).parent))
    assert torchrun is not None
    cmd = trainer_command(tiny_shards, str(tmp_path / "logs"), "torchrun", loss="clip", batch_size=8,
                          warmup=1, extra=["--workers", "0", "--force-image-size", "64"])
    proc = run_python([torchrun, "--nproc_per_node", "1", *cmd[1:]])  # the torchrun script, run by this python
    assert (tmp_path / "logs" / "torchrun" / "checkpoints" / "epoch_1.pt").is_file(), proc.stderr[-2000:]
