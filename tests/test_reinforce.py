"""Reinforced shards (`open-clip-lightclip reinforce`, `--distill-reinforced`): stored augmentations replayed bit for
bit, teacher embeddings of each view, synthetic captions from a CoCa captioner built in the test, and training from
them equal to online distillation on the replayed views."""
import io
import json
import re
import tarfile

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from conftest import run_python
from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.data.augment import AugmentError, AugmentSpec, draw_params, output_layout, replay, \
    spec_from_transform
from open_clip_lightclip.data.reinforced import ReinforcedSamples, decode_embeddings, draw_indices, _encode
from open_clip_lightclip.upstream.trainer_cmd import trainer_command

AUG = dict(scale=(0.3, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, gray_scale_prob=0.2)


def _image(seed=0, size=(70, 50)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("aug", [AUG, dict(AUG, color_jitter_prob=1.0, gray_scale_prob=1.0), {}])
def test_replaying_the_choices_the_train_transform_drew_gives_its_output_bit_for_bit(aug, monkeypatch):
    """Record what OpenCLIP's own train transform draws (crop box, jitter order and factors, the two coin flips),
    replay it: the same tensor, exactly."""
    import open_clip.transform as oct
    from torchvision.transforms import ColorJitter, RandomResizedCrop

    tf = open_clip.image_transform(32, is_train=True, aug_cfg=aug)
    seen = {}
    crop, jitter, coin = RandomResizedCrop.get_params, ColorJitter.get_params, oct.random.random

    def spy(name, fn):
        def call(*a, **k):
            seen.setdefault(name, []).append(fn(*a, **k))
            return seen[name][-1]
        return call

    monkeypatch.setattr(RandomResizedCrop, "get_params", staticmethod(spy("crop", crop)))
    monkeypatch.setattr(ColorJitter, "get_params", staticmethod(spy("jitter", jitter)))
    monkeypatch.setattr(oct.random, "random", spy("coin", coin))
    size, mean, std = output_layout(tf)
    for seed in range(6):
        seen.clear()
        out = tf(_image(seed))
        coins = list(seen.get("coin", []))
        jittered = bool(aug.get("color_jitter_prob")) and coins.pop(0) < aug["color_jitter_prob"]
        gray = bool(aug.get("gray_scale_prob")) and coins.pop(0) < aug["gray_scale_prob"]
        row = np.full(14, np.nan, dtype=np.float32)
        row[0:4], row[4], row[13] = seen["crop"][0], float(jittered), float(gray)
        if jittered:
            order, *factors = seen["jitter"][0]
            row[5:9], row[9:13] = order.numpy(), [np.nan if f is None else f for f in factors]
        assert torch.equal(replay(_image(seed), row, size, mean, std), out)


def test_the_spec_is_read_from_the_trainer_transform_and_draws_repeat():
    spec = spec_from_transform(open_clip.image_transform(32, is_train=True, aug_cfg=AUG))
    assert spec == AugmentSpec(scale=(0.3, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8,
                               gray_scale_prob=0.2)
    assert AugmentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    before = torch.random.get_rng_state()
    a, b = draw_params(spec, _image(), 7), draw_params(spec, _image(), 7)
    np.testing.assert_array_equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    rows = np.stack([draw_params(spec, _image(), s) for s in range(200)])
    assert 0.65 < rows[:, 4].mean() < 0.95 and 0.1 < rows[:, 13].mean() < 0.3  # p = 0.8, 0.2
    area = rows[:, 2] * rows[:, 3] / (70 * 50)
    assert area.min() >= 0.29 and area.max() <= 1.0
    with pytest.raises(AugmentError, match="drop use_timm"):
        spec_from_transform(open_clip.image_transform(32, is_train=True, aug_cfg={"use_timm": True}))


def test_draws_are_a_function_of_seed_epoch_shard_and_key_only():
    draws = [draw_indices(0, e, f"{i:06d}", 10, 5) for e in range(3) for i in range(300)]
    assert all(0 <= k < 10 and 0 <= j < 5 for k, j in draws)
    assert draws == [draw_indices(0, e, f"{i:06d}", 10, 5) for e in range(3) for i in range(300)]
    assert len({k for k, _ in draws}) == 10 and len({j for _, j in draws}) == 5
    assert draws[:300] != draws[300:600]  # another epoch, other views
    assert draw_indices(1, 0, "000001", 10, 5) != draw_indices(0, 0, "000001", 10, 5) or \
        draw_indices(1, 0, "000002", 10, 5) != draw_indices(0, 0, "000002", 10, 5)
    # a key repeated in another shard (webdatasets often number samples per shard) draws apart
    other = [draw_indices(0, 0, f"{i:06d}", 10, 5, "train-00001.tar") for i in range(300)]
    assert other != [draw_indices(0, 0, f"{i:06d}", 10, 5, "train-00000.tar") for i in range(300)]


def test_stored_embeddings_round_trip_in_each_dtype():
    from open_clip_lightclip.commands.reinforce import DTYPES as CLI_DTYPES
    from open_clip_lightclip.data.reinforced import DTYPES

    assert CLI_DTYPES == DTYPES
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    for dtype, tol in (("fp32", 0), ("fp16", 1e-3), ("bf16", 8e-3)):
        back = decode_embeddings(np.load(io.BytesIO(_encode(x, dtype))), dtype)
        assert back.dtype == np.float32
        np.testing.assert_allclose(back, x, rtol=tol, atol=tol)


def test_training_reads_every_source_folders_description_and_they_must_agree(tmp_path, tiny_shards, capsys):
    """`--train-data 'a/...::b/...'` (or a brace pattern over folders): every folder's reinforce.json /
    teacher_cache.json is read and must agree on what training reads (a bf16 folder read as fp16 is garbage);
    `reinforce --aug-cfg ratio=...` and `--distill-reinforced --aug-cfg use_timm=True` stop in one line."""
    from open_clip_train.params import parse_args

    from open_clip_lightclip.data.reinforced import ReinforceError, read_info
    from open_clip_lightclip.models.teachers import TeacherError
    from open_clip_lightclip.upstream.distill import cache_info_for

    base = {"format": 1, "param_width": 14, "views": 10, "dtype": "fp16", "synthetic": 2, "seed": 0,
            "teachers": [{"spec": "T=t.pt", "dim": 4, "logit_scale": 50.0, "image_size": [32, 32]}]}
    folders = {"a": base, "b": dict(base, seed=1), "c": dict(base, dtype="bf16"),
               "d": dict(base, teachers=[dict(base["teachers"][0], spec="U=u.pt")])}
    for name, info in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "reinforce.json").write_text(json.dumps(info))
        (tmp_path / name / "teacher_cache.json").write_text(json.dumps({"teachers": info["teachers"]}))
    a, b, c, d = (f"{tmp_path}/{n}/train-{{00000..00001}}.tar" for n in "abcd")
    assert read_info(f"{a}::{b}")["views"] == 10  # another seed is fine: each sample carries its own views
    with pytest.raises(ReinforceError, match=r"c/reinforce.json and .*a/reinforce.json were made with different "
                                             r"'dtype' \('bf16' vs 'fp16'\)"):
        read_info(f"{a}::{c}")
    with pytest.raises(ReinforceError, match="different 'dtype'"):
        read_info(f"{tmp_path}/{{a,c}}/train-00000.tar")
    with pytest.raises(ReinforceError, match=r"no .*e/reinforce.json; make the shards with `open-clip-lightclip "
                                             r"reinforce`"):
        read_info(f"{a}::{tmp_path}/e/train-00000.tar")
    assert cache_info_for(f"{a}::{c}")["teachers"] == base["teachers"]
    with pytest.raises(TeacherError, match="--distill-cache: .*d/teacher_cache.json and .* different 'teachers'"):
        cache_info_for(f"{a}::{d}")
    assert cli_main(["reinforce", tiny_shards, "--out", str(tmp_path / "r"), "--aug-cfg", "ratio=(0.5, 2.0)",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--aug-cfg ratio: OpenCLIP's train transform ignores it" in err[0], err
    with pytest.raises(SystemExit):
        parse_args(["--train-data", a, "--dataset-type", "webdataset", "--device", "cpu", "--model", "LightCLIP-Tiny",
                    "--loss", "clip", "--distill-reinforced", "--aug-cfg", "use_timm=True"])
    assert "--aug-cfg use_timm replaces: drop use_timm from --aug-cfg" in capsys.readouterr().err.splitlines()[-1]


def test_the_stage_packs_the_drawn_view_and_captions_and_follows_the_epoch():
    from open_clip_lightclip.models.distill_heads import unpack_texts

    class Epoch:
        def __init__(self, v):
            self.v = v

        def get_value(self):
            return self.v

    tok = open_clip.get_tokenizer("LightCLIP-Tiny")
    spec = AugmentSpec(**{k: v for k, v in AUG.items()})
    params = np.stack([draw_params(spec, _image(), s) for s in range(4)])
    timg, ttxt = np.arange(4 * 3, dtype=np.float32).reshape(4, 3), -np.arange(3 * 3, dtype=np.float32).reshape(3, 3)
    info = {"views": 4, "synthetic": 2, "dtype": "fp32"}
    sample = {"__key__": "k1", "__url__": "/data/dr/train-00003.tar", "image": _image(), "text": tok("a cat")[0],
              "paug.npy": params, "syn.json": ["a dog", "a red bird"], "timg.npy": timg, "ttxt.npy": ttxt}
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    stage = ReinforcedSamples(lambda t: tok(t)[0], (24, 24), mean, std, 5, info, cached=True, synthetic=True)
    for epoch in range(3):
        stage.shared_epoch = Epoch(epoch)
        (image, packed), = list(stage([sample]))
        k, j = draw_indices(5, epoch, "k1", 4, 2, "train-00003.tar")
        assert torch.equal(image, replay(_image(), params[k], (24, 24), mean, std))
        tokens, syn, ((ti, tt, ts),) = unpack_texts(packed[None], [3], synthetic=True)
        assert torch.equal(tokens[0], tok("a cat")[0]) and torch.equal(syn[0], tok(["a dog", "a red bird"][j])[0])
        assert ti[0].tolist() == timg[k].tolist() and tt[0].tolist() == ttxt[0].tolist()
        assert ts[0].tolist() == ttxt[1 + j].tolist()
    with pytest.raises(ValueError, match="has no syn.json: train with shards `open-clip-lightclip reinforce` wrote"):
        list(stage([{k: v for k, v in sample.items() if k != "syn.json"}]))


# --- the command and the trainer ---------------------------------------------------------------------------------
COCA = {"embed_dim": 64, "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "layers": 1, "heads": 2, "width": 64,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                           "attn_pooler_heads": 2}}


BUILD_MODELS = """
import json, sys
from pathlib import Path
import open_clip, torch
from open_clip.coca_model import CoCa
root, COCA = Path(sys.argv[1]), json.loads(sys.argv[2])
torch.manual_seed(2)
teacher = open_clip.create_model("LightCLIP-Tiny")
torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, root / "teacher.pt")
coca = CoCa(**{k: v for k, v in COCA.items() if k != "custom_text"})
tok = open_clip.get_tokenizer("LightCLIP-Tiny")  # 32-token CLIP tokenizer
loss_fn = open_clip.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0)
opt = torch.optim.AdamW(coca.parameters(), lr=1e-3)
images, texts = torch.randn(8, 3, 32, 32), tok(["a red square", "a blue circle"] * 4)
for _ in range(5):
    out = coca(images, texts)
    loss = sum(loss_fn(out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"]))
    opt.zero_grad()
    loss.backward()
    opt.step()
assert all(bool(torch.isfinite(p).all()) for p in coca.parameters())
cap = root / "coca"
cap.mkdir()
(cap / "open_clip_config.json").write_text(json.dumps({"model_cfg": COCA, "preprocess_cfg": {
    "size": 32, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}))
torch.save(coca.state_dict(), cap / "open_clip_pytorch_model.bin")
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A teacher (LightCLIP-Tiny, the student's size, tokenizer and normalisation) saved as a trainer checkpoint and
    a tiny CoCa captioner trained a few steps on captions in the test, saved as an OpenCLIP `local-dir:` folder
    (built in a fresh process, as the commands that read them run: nothing another test left in this one reaches
    them)."""
    root = tmp_path_factory.mktemp("models")
    run_python(["-c", BUILD_MODELS, str(root), json.dumps(COCA)])
    return {"teacher": f"LightCLIP-Tiny={root / 'teacher.pt'}", "captioner": f"local-dir:{root / 'coca'}"}


def _members(shard):
    out = {}
    with tarfile.open(shard) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def _reinforce(src, out, models, *extra):
    """`open-clip-lightclip reinforce` with a captioner, in a fresh process (its exit status; its output goes to
    ``_reinforce.out`` / ``.err``)."""
    proc = run_python(["-c", "from open_clip_lightclip.cli import main; raise SystemExit(main())", "reinforce", src,
                       "--out", str(out), "--teacher", models["teacher"], "--views", "3", "--captioner",
                       models["captioner"], "--synthetic", "2", "--max-tokens", "8", "--batch-size", "8",
                       "--aug-cfg", "scale=(0.5, 1.0)", "--no-progress", *extra], check=False)
    _reinforce.out, _reinforce.err = proc.stdout, proc.stderr
    return proc.returncode


@pytest.mark.slow
def test_reinforce_writes_views_embeddings_and_captions_resumes_and_refuses(models, tiny_shards, tmp_path, capsys):
    from open_clip_lightclip.models.teachers import build_teacher

    out = tmp_path / "dr"
    assert _reinforce(tiny_shards, out, models) == 0, _reinforce.err[-2000:]
    said = _reinforce.out
    assert re.search(r"32 samples in 2 shards .* 3 views, 128-d teacher embeddings \(fp16\), 2 synthetic captions; "
                     r"\d+ bytes added per sample", said)
    info = json.loads((out / "reinforce.json").read_text())
    assert info["views"] == 3 and info["synthetic"] == 2 and info["dtype"] == "fp16" and info["augment"]["scale"] == [
        0.5, 1.0] and info["captioner"]["decoding"]["top_p"] == 0.9 and json.loads((out / "sizes.json").read_text()) \
        == {"train-00000.tar": 16, "train-00001.tar": 16}
    samples = _members(out / "train-00000.tar")
    original = _members(tiny_shards.replace("{00000..00001}", "00000"))
    teacher = build_teacher(models["teacher"])
    key, parts = next(iter(samples.items()))
    assert all(parts[ext] == data for ext, data in original[key].items())  # every input member kept
    params = np.load(io.BytesIO(parts["paug.npy"]))
    timg, ttxt = (np.load(io.BytesIO(parts[m])) for m in ("timg.npy", "ttxt.npy"))
    captions = json.loads(parts["syn.json"])
    assert params.shape == (3, 14) and timg.shape == (3, 128) and ttxt.shape == (3, 128) and timg.dtype == np.float16
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert info["bytes_per_sample"] == pytest.approx(np.mean([sum(len(p[m]) for m in ("paug.npy", "timg.npy", "ttxt.npy",
                                                                                    "syn.json"))
                                                              for s in (out / "train-00000.tar", out / "train-00001.tar")
                                                              for p in _members(s).values()]), abs=0.1)
    # each stored row is the teacher's embedding of that stored view / caption
    image = Image.open(io.BytesIO(parts["png"])).convert("RGB")
    views = torch.stack([replay(image, p, teacher.image_size, teacher.mean, teacher.std) for p in params])
    np.testing.assert_allclose(timg.astype(np.float32), teacher.embed_views(views).numpy(), atol=2e-3)
    caption = parts["txt"].decode()
    np.testing.assert_allclose(ttxt.astype(np.float32), teacher.embed_captions([caption, *captions]).numpy(), atol=2e-3)
    # a sample's synthetic captions are its own: another --batch-size writes the same ones
    assert _reinforce(tiny_shards, tmp_path / "dr-b3", models, "--batch-size", "3") == 0, _reinforce.err[-2000:]
    for shard in ("train-00000.tar", "train-00001.tar"):
        assert {k: p["syn.json"] for k, p in _members(tmp_path / "dr-b3" / shard).items()} == \
            {k: p["syn.json"] for k, p in _members(out / shard).items()}
    # resumable and never overwriting: a rerun keeps every finished shard; other settings are refused
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert _reinforce(tiny_shards, out, models) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before
    assert _reinforce(tiny_shards, out, models, "--views", "4") == 2
    assert "holds a reinforcement of other shards or settings; choose another --out" in _reinforce.err
    # bad input stops in one line
    capsys.readouterr()
    assert cli_main(["reinforce", tiny_shards, "--out", str(tmp_path / "x"), "--captioner", models["teacher"],
                     "--synthetic", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a CoCa model" in err[0]
    assert cli_main(["reinforce", tiny_shards, "--out", str(tmp_path / "y"), "--teacher",
                     f"LightCLIP-Tiny={tmp_path}/none.pt", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is neither a file nor a pretrained tag" in err[0]
    assert cli_main(["reinforce", tiny_shards, "--out", str(tmp_path / "z"), "--aug-cfg", "use_timm=True",
                     "--no-progress"]) == 2
    assert "drop use_timm" in capsys.readouterr().err


def _weights(path):
    return {k.removeprefix("module."): v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}


@pytest.mark.slow
def test_training_from_reinforced_shards_equals_online_distillation_on_the_replayed_views(models, tiny_shards,
                                                                                          tmp_path):
    """Same seed, same draws: one run reads the teachers' stored embeddings of the drawn view and captions (fp32),
    the other runs the teacher online on the student's replayed view and the drawn synthetic caption. Every weight
    agrees to 1e-5 after 4 steps with --accum-freq 2. (AdamW's normalised step moves an element whose gradient is
    ~0 by ~lr whichever sign float rounding gives it; ``--eps 1e-3`` keeps such elements' steps proportional to
    their gradient, so a rounding difference stays a rounding difference.)"""
    out = tmp_path / "dr"
    assert _reinforce(tiny_shards, out, models, "--dtype", "fp32") == 0
    data = str(out / "train-{00000..00001}.tar")
    common = ["--workers", "0", "--distill-reinforced", "--distill-feature-weight", "1", "--accum-freq", "2",
              "--batch-size", "4", "--eps", "1e-3", "--log-every-n-steps", "1"]
    logs = {}
    for name, extra in (("stored", []), ("online", ["--distill-teacher", models["teacher"]])):
        cmd = trainer_command(data, str(tmp_path / "logs"), name, model="LightCLIP-Tiny", loss="clip", batch_size=4,
                              epochs=1, warmup=1, extra=[*common, *extra])[1:]
        proc = run_python(cmd)
        logs[name] = proc.stdout + proc.stderr
    assert "reinforced shards: 3 stored views per image (crop scale 0.5-1)" in logs["stored"]
    assert "+ 1 x the terms of one of 2 synthetic captions" in logs["stored"]
    assert "(cached embeddings;" in logs["stored"] and "(online;" in logs["online"]
    for term in ("Synthetic_contrastive_loss", "Synthetic_distill_affinity_loss", "Synthetic_distill_feature_loss"):
        assert term in logs["stored"]
    a = _weights(tmp_path / "logs" / "online" / "checkpoints" / "epoch_1.pt")
    b = _weights(tmp_path / "logs" / "stored" / "checkpoints" / "epoch_1.pt")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst


@pytest.mark.extended
def test_torchcompile_trains_lightclip_from_reinforced_shards_without_graph_breaks(models, tiny_shards, tmp_path):
    """``--torchcompile`` on the reinforced route: the default LightCLIP step, both distillation terms from the
    stored rows and the synthetic caption's terms; the packed text is unpacked by shape, so Dynamo traces the step
    without a graph break (``TORCH_LOGS``) and recompiles at most once (the epoch's last, smaller batch)."""
    from pathlib import Path

    out = tmp_path / "dr"
    assert _reinforce(tiny_shards, out, models) == 0, _reinforce.err[-2000:]
    cmd = trainer_command(str(out / "train-{00000..00001}.tar"), str(tmp_path / "logs"), "run",
                          model="LightCLIP-Tiny", loss="lightclip", batch_size=8, epochs=1, warmup=1,
                          extra=["--workers", "0", "--distill-reinforced", "--distill-feature-weight", "1",
                                 "--torchcompile", "--log-every-n-steps", "1"])
    runner = Path(__file__).parent / "compile_runner.py"
    proc = run_python([str(runner), *cmd[3:]], TORCH_LOGS="recompiles,graph_breaks")
    output = proc.stdout + proc.stderr
    log = (tmp_path / "logs" / "run" / "out.log").read_text()
    assert log.count("Train Epoch: 0 [") == 4 and "Synthetic_instance_loss" in log
    assert output.count("Graph break from") == 0 and output.count("Recompiling function") <= 1, output[-3000:]


@pytest.mark.extended
def test_shards_without_what_training_asks_for_stop_the_trainer_in_one_line(train, models, tiny_shards, tmp_path):
    proc, _ = train(extra=["--distill-reinforced"], check=False)  # plain shards
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "reinforce.json; make the shards with `open-clip-lightclip " \
        "reinforce`" in errors[0], proc.stderr[-2000:]
    out = tmp_path / "no-captions"
    assert cli_main(["reinforce", tiny_shards, "--out", str(out), "--teacher", models["teacher"], "--views", "2",
                     "--no-progress"]) == 0
    cmd = trainer_command(str(out / "train-{00000..00001}.tar"), str(tmp_path / "logs"), "x", model="LightCLIP-Tiny",
                          loss="clip", batch_size=8, epochs=1, warmup=1,
                          extra=["--workers", "0", "--distill-reinforced"])[1:]
    proc = run_python(cmd, check=False)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "hold no synthetic captions" in errors[0] and \
        "--distill-synthetic-weight 0" in errors[0], proc.stderr[-2000:]
    assert "Train Epoch" not in proc.stdout + proc.stderr


@pytest.mark.extended
def test_resume_repeats_the_draws_and_torchrun_trains_from_reinforced_shards(models, tiny_shards, tmp_path):
    """`reinforce --workers 2` writes what one process writes (every draw is seeded by the shard and the key); a run
    resumed from its epoch-1 checkpoint ends where the uninterrupted run ends, to 1e-6 in every weight (the views,
    synthetic captions and sample order follow the trainer's epoch, not counts kept in the loader); and two
    torchrun processes (gloo) train from the same shards with stored teacher rows and synthetic captions."""
    import sys
    from pathlib import Path

    out = tmp_path / "dr"
    assert _reinforce(tiny_shards, out, models, "--workers", "2") == 0  # two processes, a shard each
    serial = tmp_path / "serial"
    assert _reinforce(tiny_shards, serial, models) == 0
    assert (out / "train-00001.tar").read_bytes() != b"" and all(
        _members(out / name) == _members(serial / name) for name in ("train-00000.tar", "train-00001.tar"))
    data = str(out / "train-{00000..00001}.tar")
    flags = ["--workers", "1", "--distill-reinforced", "--batch-size", "8", "--eps", "1e-3", "--save-frequency", "1"]

    def cmd(name, epochs, *extra):
        return trainer_command(data, str(tmp_path / "logs"), name, model="LightCLIP-Tiny", loss="clip", batch_size=8,
                               epochs=epochs, warmup=1, extra=[*flags, *extra])[1:]

    run_python(cmd("straight", 2))
    straight = tmp_path / "logs" / "straight" / "checkpoints"
    run_python(cmd("resumed", 2, "--resume", str(straight / "epoch_1.pt")))  # as if stopped after epoch 1
    a, b = _weights(straight / "epoch_2.pt"), _weights(tmp_path / "logs" / "resumed" / "checkpoints" / "epoch_2.pt")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-6, worst  # upstream's own crops are drawn from the loader workers' RNG: not repeated
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = run_python([torchrun, "--standalone", "--nproc_per_node", "2", *cmd("ddp", 1)], OMP_NUM_THREADS="1")
    log = (tmp_path / "logs" / "ddp" / "out.log").read_text()
    assert "total 2." in log and "Synthetic_distill_affinity_loss" in log, proc.stderr[-2000:]
    assert (tmp_path / "logs" / "ddp" / "checkpoints" / "epoch_1.pt").is_file()


@pytest.mark.extended
def test_resume_repeats_the_sample_order(tiny_shards, tmp_path):
    """Without augmentation, a run resumed from its epoch-1 checkpoint ends exactly where the uninterrupted run ends:
    the sample shuffle follows the trainer's epoch (it counted passes over the data, so a resumed run shuffled its
    epoch 1 as epoch 0)."""
    def cmd(name, *extra):
        return trainer_command(tiny_shards, str(tmp_path / "logs"), name, model="LightCLIP-Tiny", loss="clip",
                               batch_size=8, epochs=2, warmup=1,
                               extra=["--workers", "1", "--eps", "1e-3", "--save-frequency", "1", "--aug-cfg",
                                      "scale=(1.0,1.0)", "ratio=(1.0,1.0)", *extra])[1:]

    run_python(cmd("straight"))
    straight = tmp_path / "logs" / "straight" / "checkpoints"
    run_python(cmd("resumed", "--resume", str(straight / "epoch_1.pt")))
    a, b = _weights(straight / "epoch_2.pt"), _weights(tmp_path / "logs" / "resumed" / "checkpoints" / "epoch_2.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_synthetic_captions_add_each_objectives_caption_terms_weighted():
    """Real captions: the wrapped loss as it is; synthetic: `weight` x the terms one more caption adds: CLIP's whole
    loss, LightCLIP's instance term (token / MLM on the real caption only), CLIP-Lite's JSD with the same step's
    negatives, and distillation's affinity (teacher's synthetic-caption rows) and text-only feature term."""
    from open_clip.loss import ClipLoss

    from open_clip_lightclip.losses.cliplite import ClipLiteLoss
    from open_clip_lightclip.losses.distill import DistillationLoss, affinity_kl, feature_distance
    from open_clip_lightclip.losses.lightclip import LightCLIPLoss
    from open_clip_lightclip.losses.synthetic import SyntheticCaptionLoss

    torch.manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s), dim=-1)  # noqa: E731
    image, text, syn, t_image, t_text, t_syn = unit(6, 8), unit(6, 8), unit(6, 8), unit(6, 4), unit(6, 4), unit(6, 4)
    scale = torch.tensor(20.0)
    out = dict(image_features=image, text_features=text, logit_scale=scale, synthetic_text_features=syn)
    clip = ClipLoss()
    got = SyntheticCaptionLoss(clip, 0.5)(output_dict=True, **out)
    assert set(got) == {"contrastive_loss", "synthetic_contrastive_loss"}
    torch.testing.assert_close(got["synthetic_contrastive_loss"], 0.5 * clip(image, syn, scale))
    torch.testing.assert_close(got["contrastive_loss"], clip(image, text, scale))

    light = LightCLIPLoss(token_weight=0.0, mlm_weight=0.0)
    got = SyntheticCaptionLoss(light, 2.0)(output_dict=True, **out)
    torch.testing.assert_close(got["synthetic_instance_loss"], 2.0 * light.instance_loss(image, syn, scale))

    lite = ClipLiteLoss(seed=3)
    got = SyntheticCaptionLoss(lite, 1.0)(output_dict=True, **out)
    torch.testing.assert_close(got["synthetic_cliplite_jsd"], lite.jsd(image, syn, scale, lite.step_generator(0)))

    kd = DistillationLoss(ClipLoss(), [50.0], affinity_weight=1.0, feature_weight=1.0)
    proj = torch.nn.Linear(8, 4, bias=False)
    got = SyntheticCaptionLoss(kd, 1.0)(output_dict=True, **out, distill_t0_image_features=t_image,
                                        distill_t0_text_features=t_text, synthetic_distill_t0_text_features=t_syn,
                                        distill_p0_image_features=proj(image), distill_p0_text_features=proj(text),
                                        synthetic_distill_p0_text_features=proj(syn))
    assert set(got) == {"contrastive_loss", "distill_affinity_loss", "distill_feature_loss",
                        "synthetic_contrastive_loss", "synthetic_distill_affinity_loss",
                        "synthetic_distill_feature_loss"}
    torch.testing.assert_close(got["synthetic_distill_affinity_loss"], affinity_kl(image, syn, scale, t_image, t_syn, 50.0))
    # a synthetic caption's embedding weighs what the real caption's does: half of the feature term
    torch.testing.assert_close(got["synthetic_distill_feature_loss"], feature_distance(proj(syn), t_syn).mean() / 2)
    torch.testing.assert_close(got["distill_feature_loss"], (feature_distance(proj(image), t_image).mean()
                                                             + feature_distance(proj(text), t_text).mean()) / 2)
    with pytest.raises(ValueError, match="no 'synthetic_text_features'"):
        SyntheticCaptionLoss(clip)(image_features=image, text_features=text, logit_scale=scale)
