"""Distillation through the real `python -m open_clip_train.main` (issue 14): teachers built in the test."""
import io
import re
import tarfile

import numpy as np
import open_clip
import pytest
import torch

from conftest import run_python
from open_clip_lightclip.upstream.trainer_cmd import trainer_command
from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.models.checkpoint import read_state_dict

pytestmark = pytest.mark.slow
LOGGED = re.compile(r"Logit Scale: .*")  # a trainer log line: logit scale, every named term, the loss
TERMS = re.compile(r"Distill_affinity_loss: ([\d.]+).*Distill_feature_loss: ([\d.]+)")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two teachers saved as trainer-style checkpoints: one unlike the student (LightCLIP-MNv3-S: 77-token
    tokenizer, 224 px, 512-d), one like it (LightCLIP-Tiny: the same tokenizer, 96 px, 128-d)."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name, seed in (("LightCLIP-MNv3-S", 1), ("LightCLIP-Tiny", 2)):
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
        path = root / f"{name}.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
        out[name] = f"{name}={path}"
    return out


def _state_dict(path):
    return {k.removeprefix("module."): v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}


@pytest.mark.extended
def test_lightclip_student_of_an_unlike_teacher_with_accum_freq_resumes_and_exports(train, teachers, tmp_path, capsys):
    flags = ["--force-image-size", "64", "--distill-teacher", teachers["LightCLIP-MNv3-S"], "--lightclip-mlm-weight", "0.5",
             "--distill-feature-weight", "1", "--accum-freq", "2", "--batch-size", "4", "--log-every-n-steps", "1"]
    proc, ckpt_dir = train(loss="lightclip", extra=flags, name="kd")
    log = proc.stdout + proc.stderr
    assert "distilling from LightCLIP-MNv3-S=" in log and "(online;" in log
    values = [tuple(map(float, m)) for m in TERMS.findall(log)]
    assert values and all(0 < a < 10 and 0 < f < 4 for a, f in values)
    sd = _state_dict(ckpt_dir / "epoch_1.pt")
    assert sd["distill_projector.maps.0.image.weight"].shape == (512, 128)  # student 128-d -> teacher 512-d
    assert not any("teacher" in k for k in sd)  # the teacher is not part of the student's checkpoint
    # resumed with the same flags: the projector comes back, training continues with the same teacher
    proc, _ = train(loss="lightclip", extra=[*flags, "--resume", "latest"], epochs=2, name="kd")
    assert TERMS.search(proc.stdout + proc.stderr)
    resumed = _state_dict(ckpt_dir / "epoch_2.pt")
    assert not torch.equal(resumed["distill_projector.maps.0.image.weight"], sd["distill_projector.maps.0.image.weight"])
    # inference and export: no projector
    model = open_clip.create_model("LightCLIP-Tiny", pretrained=str(ckpt_dir / "epoch_2.pt"), force_image_size=64)
    assert not hasattr(model, "distill_projector")
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt_dir / "epoch_2.pt"), str(out)]) == 0
    assert not any(k.startswith("distill_projector") for k in read_state_dict(next(out.glob("*.safetensors"))))


def test_upstream_distill_flags_with_loss_use_the_teachers_own_tokenizer(train, teachers):
    model, weights = teachers["LightCLIP-MNv3-S"].split("=")
    proc, _ = train(loss="clip", extra=["--force-image-size", "64", "--distill-model", model,
                                        "--distill-pretrained", weights, "--log-every-n-steps", "1",
                                        "--train-num-samples", "8"])  # one step says it
    log = proc.stdout + proc.stderr
    assert "Distill_affinity_loss" in log and "Contrastive_loss" in log
    assert "Distill_feature_loss" not in log  # upstream's meaning: affinity distillation only


def test_bad_teacher_stops_before_training_with_one_line(train, tmp_path):
    proc, _ = train(extra=["--distill-teacher", f"LightCLIP-Tiny={tmp_path}/missing.pt"], check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "is neither a file nor a pretrained tag of LightCLIP-Tiny" in errors[0]
    assert "Train Epoch" not in proc.stdout + proc.stderr


def _teacher_rows(shard):
    with tarfile.open(shard) as tar:
        return {m.name.split(".")[0]: np.load(io.BytesIO(tar.extractfile(m).read()))
                for m in tar if m.name.endswith(".teacher.npy")}


def test_cache_equals_the_online_teacher_and_training_from_it_equals_online_training(train, teachers, tiny_shards,
                                                                                      tmp_path):
    """A teacher with the student's size and normalisation, augmentation off: the student's view is the raw
    image the cache's teacher saw, so embeddings and training agree."""
    cache = tmp_path / "cache"
    assert cli_main(["cache-teacher", tiny_shards, "--out", str(cache), "--teacher", teachers["LightCLIP-Tiny"],
                     "--no-progress"]) == 0
    # resumable, never overwriting: a rerun keeps the finished shards; another teacher is refused
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.tar")}
    assert cli_main(["cache-teacher", tiny_shards, "--out", str(cache), "--teacher", teachers["LightCLIP-Tiny"],
                     "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.tar")} == before
    assert cli_main(["cache-teacher", tiny_shards, "--out", str(cache), "--teacher", teachers["LightCLIP-MNv3-S"],
                     "--no-progress"]) == 2
    # the cached embeddings == the online teacher's on the student's (un-augmented) view
    from open_clip_lightclip.data.shards import read_shard_samples
    from open_clip_lightclip.models.teachers import build_teacher

    teacher = build_teacher(teachers["LightCLIP-Tiny"])
    _, train_tf, _ = open_clip.create_model_and_transforms("LightCLIP-Tiny", aug_cfg={"scale": (1.0, 1.0)})
    tok = open_clip.get_tokenizer("LightCLIP-Tiny")
    first = tiny_shards.replace("{00000..00001}", "00000")
    samples = list(read_shard_samples(first))
    images = torch.stack([train_tf(im) for _, im, _, _ in samples])
    online = teacher.embed_student_batch(images, tok([c for _, _, c, _ in samples]), tok,
                                         teacher.mean, teacher.std)
    rows = _teacher_rows(cache / "train-00000.tar")
    cached = np.stack([rows[k] for k, _, _, _ in samples])
    np.testing.assert_allclose(cached[:, 0], online[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(cached[:, 1], online[1].numpy(), atol=1e-5)
    # training: online teacher vs cache, same seed and data order
    common = ["--aug-cfg", "scale=(1.0, 1.0)", "--distill-feature-weight", "1", "--log-every-n-steps", "1"]
    _, online_dir = train(extra=[*common, "--distill-teacher", teachers["LightCLIP-Tiny"]], name="online")
    cmd = trainer_command(str(cache / "train-{00000..00001}.tar"), str(tmp_path / "logs"), "cached",
                          model="LightCLIP-Tiny", loss="clip", batch_size=8, epochs=1, warmup=1,
                          extra=["--workers", "0", "--distill-cache", *common])[1:]  # the online run's flags
    proc = run_python(cmd)
    assert "(cached embeddings;" in proc.stdout + proc.stderr
    # every step's logged logit scale, terms (contrastive, affinity, feature) and loss: the same numbers, to the
    # last printed digit
    online, cached = ([[float(x) for x in re.findall(r"\d+\.\d+", line)] for line in LOGGED.findall(
        (tmp_path / "logs" / name / "out.log").read_text())] for name in ("online", "cached"))
    assert len(online) == 4 and len(online[0]) == 9
    np.testing.assert_allclose(cached, online, rtol=0, atol=1.01e-4)
    # and so are the weights, but for a few elements: a gradient near 0 whose float rounding differs between the
    # two runs (the cache's teacher ran at another batch size) can change sign, and AdamW's first steps move that
    # element by ~lr either way; a cache row paired with the wrong sample moves nearly all of them
    a = _state_dict(online_dir / "epoch_1.pt")
    b = _state_dict(tmp_path / "logs" / "cached" / "checkpoints" / "epoch_1.pt")
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    off = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in floats)
    assert off <= 1e-3 * sum(a[k].numel() for k in floats), off
