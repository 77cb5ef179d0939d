"""Bad input at every entry point: a one-line error naming the problem and the fix (no traceback), or a
documented skip-and-count for faulty samples, and no file a user wrote is changed.

Entry points: the real trainer (``python -m open_clip_train.main``), ``open_clip.create_model_and_transforms``
and the ``open-clip-lightclip`` subcommands. README "Failure modes" lists the same outcomes.
"""
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run_python
from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.data.shards import add_tar_member, read_shard_samples
from open_clip_lightclip.data.synthetic import synthetic_samples, write_synthetic_shards
from open_clip_lightclip.upstream.trainer_cmd import trainer_command


def snapshot(*roots) -> dict:
    """sha256 of every file under ``roots`` (files or folders)."""
    out = {}
    for root in map(Path, roots):
        for p in ([root] if root.is_file() else sorted(root.rglob("*"))):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(stderr: str) -> str:
    """The last line of stderr, checked to be the only error output: no traceback. Torch's own exit-time
    statistics (glog-style ``I1123 12:00:00.000 ...`` lines, logged through the trainer's INFO logger) are skipped."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not re.match(r"[IWE]\d{4} ", line)]
    assert lines, "no error printed"
    return lines[-1]


ALL_TERMS = ["--lightclip-token-weight", "1", "--lightclip-mlm-weight", "0.5"]  # both off by default


def trainer(shards, logs, name, loss="lightclip", extra=(), check=False):
    cmd = trainer_command(shards, str(logs), name, model="LightCLIP-Tiny", loss=loss, batch_size=8, warmup=1,
                          extra=["--workers", "0", "--force-image-size", "64", *extra])
    return run_python(cmd[1:], check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished --loss lightclip run with all three terms: (shards pattern, checkpoint)."""
    root = tmp_path_factory.mktemp("trained")
    write_synthetic_shards(root / "shards", num_samples=32, image_size=64, samples_per_shard=16)
    shards = str(root / "shards" / "train-{00000..00001}.tar")
    trainer(shards, root / "logs", "base", extra=ALL_TERMS, check=True)
    return shards, root / "logs" / "base" / "checkpoints" / "epoch_1.pt"


# --- the trainer: --resume / --pretrained ------------------------------------------------------------
@pytest.mark.slow
def test_resume_from_a_truncated_checkpoint_stops_in_one_line(trained, tmp_path):
    shards, ckpt = trained
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:50_000])
    before = snapshot(truncated, ckpt)
    proc = trainer(shards, tmp_path / "logs", "r", extra=["--resume", str(truncated)])
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert line.startswith(f"error: {truncated}: cannot read it as a checkpoint (truncated or corrupt file?)"), line
    assert snapshot(truncated, ckpt) == before


@pytest.mark.slow
def test_resume_with_other_flags_stops_in_one_line_naming_the_fix(trained, tmp_path):
    shards, ckpt = trained
    before = snapshot(ckpt)
    proc = trainer(shards, tmp_path / "logs", "r", extra=["--resume", str(ckpt), "--lightclip-token-dim", "32", *ALL_TERMS])
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert line.startswith(f"error: --resume {ckpt}: the checkpoint does not fit this run's model (4 shape mismatches "
                           "(e.g. 'lightclip_train.image_token_proj.weight': [256, 288] in the file, [32, 288]"), line
    assert f"or start a new run from its weights with --pretrained {ckpt}" in line
    assert snapshot(ckpt) == before


@pytest.mark.slow
def test_resume_from_a_missing_file_stops_in_one_line(trained, tmp_path):
    shards, _ = trained
    proc = trainer(shards, tmp_path / "logs", "r", loss=None, extra=["--resume", str(tmp_path / "nope.pt")])
    assert proc.returncode != 0
    assert one_line_error(proc.stderr).startswith(f"error: {tmp_path / 'nope.pt'}: no such file")


@pytest.mark.slow
def test_finetune_with_other_training_head_shapes_keeps_their_init(trained, tmp_path):
    """Training-only heads are optional both ways: --pretrained with another --lightclip-token-dim trains."""
    shards, ckpt = trained
    before = snapshot(ckpt)
    proc = trainer(shards, tmp_path / "logs", "ft", extra=["--pretrained", str(ckpt), "--lightclip-token-dim", "32", *ALL_TERMS],
                   check=True)
    log = (tmp_path / "logs" / "ft" / "out.log").read_text()
    assert "4 tensor(s) of training-only modules have other shapes in the file than in the model" in log + proc.stderr
    tuned = torch.load(tmp_path / "logs" / "ft" / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"]
    assert tuned["lightclip_train.image_token_proj.weight"].shape == (32, 288)
    assert snapshot(ckpt) == before


def test_pretrained_with_other_training_head_shapes_loads_the_rest(tmp_path):
    """The same through ``open_clip.load_checkpoint``: every other key is loaded, the mismatched heads are not."""
    import open_clip

    from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg

    torch.manual_seed(0)
    source = open_clip.create_model("LightCLIP-Tiny")
    source.add_train_heads(LightCLIPTrainCfg(token_dim=64))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "epoch_1.pt")
    torch.manual_seed(1)
    model = open_clip.create_model("LightCLIP-Tiny")
    model.add_train_heads(LightCLIPTrainCfg(token_dim=32))
    fresh = model.lightclip_train.image_token_proj.weight.detach().clone()
    open_clip.load_checkpoint(model, str(tmp_path / "epoch_1.pt"))
    assert torch.equal(model.lightclip_train.image_token_proj.weight, fresh)
    assert torch.equal(model.logit_scale, source.logit_scale)
    assert torch.equal(model.lightclip_train.fusion["2"].q.weight, source.lightclip_train.fusion["2"].q.weight)
    assert "load_state_dict" not in vars(model)  # the temporary filter is gone again


@pytest.mark.slow
def test_bad_flag_value_stops_the_real_trainer_in_one_line(trained, tmp_path):
    shards, _ = trained
    proc = trainer(shards, tmp_path / "logs", "r", extra=["--lightclip-sinkhorn-iters", "0"])
    assert proc.returncode == 2
    assert "error: --lightclip-sinkhorn-iters must be >= 1, got 0" in one_line_error(proc.stderr)
    assert not (tmp_path / "logs").exists()  # stopped before the run folder


# --- the trainer: faulty samples are skipped and logged ----------------------------------------------
def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _hostile_shards(folder: Path) -> str:
    """A shard of good samples mixed with a 1x1 image, a grayscale one, an empty and an overlong caption and
    a corrupt image; and a second shard cut off in the middle."""
    folder.mkdir(parents=True)
    good = list(synthetic_samples(24, image_size=64, seed=3))
    odd = [("onepixel", Image.new("RGB", (1, 1), (255, 0, 0)), "a single red pixel"),
           ("gray", Image.new("L", (40, 30), 128), "a gray rectangle"),
           ("empty", good[0][1], ""),
           ("long", good[1][1], " ".join(["a very long caption"] * 200))]
    with tarfile.open(folder / "train-00000.tar", "w") as tar:
        for key, image, caption in good[:12] + odd:
            add_tar_member(tar, f"{key}.png", _png(image), 0)
            add_tar_member(tar, f"{key}.txt", caption.encode(), 0)
        add_tar_member(tar, "corrupt.png", b"\x89PNG\r\n\x1a\n not an image", 0)
        add_tar_member(tar, "corrupt.txt", b"a broken picture", 0)
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for key, image, caption in good[12:]:
            add_tar_member(tar, f"{key}.png", _png(image), 0)
            add_tar_member(tar, f"{key}.txt", caption.encode(), 0)
    (folder / "train-00001.tar").write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    (folder / "sizes.json").write_text(json.dumps({"train-00000.tar": 17, "train-00001.tar": 12}))
    return str(folder / "train-{00000..00001}.tar")


@pytest.mark.slow
def test_faulty_samples_are_skipped_and_logged_and_odd_ones_train(tmp_path):
    shards = _hostile_shards(tmp_path / "shards")
    before = snapshot(tmp_path / "shards")
    trainer(shards, tmp_path / "logs", "hostile", extra=["--train-num-samples", "24", "--epochs", "2"],
                   check=True)
    log = (tmp_path / "logs" / "hostile" / "out.log").read_text()
    # the corrupt image: one warning however often it is read (epochs, passes), then a count per epoch
    assert log.count("Handling webdataset error (UnidentifiedImageError") == 1, log[-3000:]
    truncated = tmp_path / "shards" / "train-00001.tar"
    assert log.count(f"webdataset: shard {truncated} is unreadable, truncated or corrupt: 7 sample(s) read from it, "
                     "1 incomplete sample(s) and the rest skipped") == 1
    summaries = re.findall(r"webdataset: epoch (\d+): skipped (\d+) unreadable or incomplete sample\(s\); (\d+) read",
                           log)
    assert [e for e, *_ in summaries] == ["0", "1"] and all(int(m) >= 2 and int(s) >= 1 for _, m, s in summaries)
    losses = [float(x) for x in re.findall(r" Loss: ([\d.eE+-]+)", log)]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "logs" / "hostile" / "checkpoints" / "epoch_1.pt").is_file()
    assert snapshot(tmp_path / "shards") == before


def _run_trainer_timed(shards, logs, *extra, timeout=300):
    """The real trainer on ``shards`` (``--loss clip``), killed after ``timeout`` s: (process, seconds taken)."""
    import subprocess
    import time

    from conftest import REPO, subprocess_env

    cmd = trainer_command(shards, str(logs), "run", loss="clip", batch_size=8, warmup=1,
                          extra=["--force-image-size", "64", "--train-num-samples", "32", *extra])
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=timeout)
    return proc, time.monotonic() - start


def _tar_of(path: Path, members: dict) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            add_tar_member(tar, name, data, 0)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["typo", "not-a-tar", "no-samples", "folder"])
def test_unreadable_train_data_stops_in_one_line_before_the_run_folder(tmp_path, case):
    """Upstream's webdataset pipeline logged "Handling webdataset error ... Ignoring" forever for all of these."""
    write_synthetic_shards(tmp_path / "shards", num_samples=32, image_size=64, samples_per_shard=16)
    good = tmp_path / "shards" / "train-00000.tar"
    if case == "typo":
        shards, first, what = str(tmp_path / "shard" / "train-{00000..00001}.tar"), tmp_path / "shard" / "train-00000.tar", \
            "no such file, nor any of the 2 shard(s) the value names: check the folder and the {a..b} range"
    elif case == "not-a-tar":
        (tmp_path / "notes.tar").write_text("these are my notes, not a tar")
        shards, first, what = f"{tmp_path / 'notes.tar'}::{good}", tmp_path / "notes.tar", "not a tar file"
    elif case == "no-samples":
        _tar_of(tmp_path / "meta.tar", {"a.json": b"{}", "a.jpg": b"not read", "b.txt": b"a caption of another key"})
        shards, first, what = str(tmp_path / "meta.tar"), tmp_path / "meta.tar", \
            "no sample with an image (.jpg, .png, .jpeg, .webp) and a text (.txt) member of the same key in its 3 member(s)"
    else:
        shards, first, what = str(tmp_path / "shards"), tmp_path / "shards", "is a folder, not a shard"
    before = snapshot(tmp_path)
    proc, seconds = _run_trainer_timed(shards, tmp_path / "logs")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc.stderr)
    assert line.startswith(f"main.py: error: --train-data: {first}: {what}"), line
    assert len(proc.stdout + proc.stderr) < 20_000 and seconds < 120  # no loop of warnings
    assert not (tmp_path / "logs").exists()  # stopped before the run folder
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_worker_whose_shards_are_all_unreadable_stops_instead_of_looping(tmp_path):
    """The first shard passes the pre-flight; the DataLoader worker that reads only the other one found no sample in
    a whole pass, which upstream repeated forever (``with_epoch``): now one line and a non-zero exit."""
    write_synthetic_shards(tmp_path / "shards", num_samples=16, image_size=64, samples_per_shard=16)
    (tmp_path / "bad.tar").write_bytes(b"\0" * 100 + b"not a tar")
    shards = f"{tmp_path / 'shards' / 'train-00000.tar'}::{tmp_path / 'bad.tar'}"
    proc, seconds = _run_trainer_timed(shards, tmp_path / "logs", "--workers", "2")
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert line.startswith(f"error: --train-data: a whole pass over 1 of its shard(s) ({tmp_path / 'bad.tar'}) gave no "
                           "readable sample"), line
    assert len(proc.stderr) < 200_000 and seconds < 200


def test_shard_check_in_process(tmp_path):
    """The pre-flight's other answers: remote shards are left to upstream, --val-data is checked too, a first sample
    whose image does not decode, a planned run's settings are computed without looking at the data."""
    from open_clip_lightclip.upstream.shard_check import DataError, check_data_args, check_shards
    from open_clip_lightclip.upstream.trainer_cmd import trainer_settings

    assert check_shards("pipe:curl -s http://x/{0..9}.tar::s3://bucket/a.tar") is None
    _tar_of(tmp_path / "a.tar", {"k.png": b"\x89PNG broken", "k.txt": b"a caption"})
    assert check_shards(str(tmp_path / "a.tar"), "--val-data").startswith(
        f"--val-data: {tmp_path / 'a.tar'}: its first sample's image k.png does not decode (UnidentifiedImageError")
    import argparse

    with pytest.raises(DataError, match="--val-data: .*a.tar: its first sample's image k.png does not decode"):
        check_data_args(argparse.Namespace(train_data=None, val_data=str(tmp_path / "a.tar"), dataset_type="auto"))
    check_data_args(argparse.Namespace(train_data=str(tmp_path / "x.csv"), val_data=None, dataset_type="auto"))
    assert trainer_settings(trainer_command(str(tmp_path / "planned-{0..3}.tar"), "/logs", "x")[3:])


def test_empty_and_overlong_captions_give_finite_lightclip_terms():
    import open_clip

    from open_clip_lightclip.losses.lightclip import LightCLIPLoss
    from open_clip_lightclip.models.train_heads import LightCLIPTrainCfg

    torch.manual_seed(0)
    model = open_clip.create_model("LightCLIP-Tiny", output_dict=True, force_image_size=64)
    model.add_train_heads(LightCLIPTrainCfg())
    tokenizer = open_clip.get_tokenizer("LightCLIP-Tiny")

    class Start:
        fraction = 1.0

    loss = LightCLIPLoss(token_weight=1, mlm_weight=0.5, soft_label_max=0.2, progress=Start())
    for captions in (["", ""], ["", "a red circle"], [" ".join(["word"] * 500), "x"]):
        model.zero_grad()
        terms = loss(**model(torch.randn(2, 3, 64, 64), tokenizer(captions)), output_dict=True)
        sum(terms.values()).backward()
        assert all(torch.isfinite(v) for v in terms.values()), (captions[0][:20], terms)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- open_clip.create_model_and_transforms -------------------------------------------------------------
def test_checkpoint_of_another_model_size_fails_in_one_line_naming_the_fix(tmp_path):
    import open_clip

    from open_clip_lightclip.models.checkpoint import CheckpointError

    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": open_clip.create_model("LightCLIP-MNv3-S").state_dict()}, ckpt)
    before = snapshot(ckpt)
    with pytest.raises(CheckpointError) as e:
        open_clip.create_model_and_transforms("LightCLIP-Tiny", pretrained=str(ckpt))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{ckpt}: not a checkpoint of this architecture")
    assert message.endswith("(pick the --model / model name the checkpoint was trained with)")
    assert snapshot(ckpt) == before


# --- the open-clip-lightclip subcommands ---------------------------------------------------------------
def test_build_shards_skips_and_counts_faulty_images_and_refuses_to_overwrite(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    images = {"ok": Image.new("RGB", (50, 40), (0, 200, 0)), "onepixel": Image.new("RGB", (1, 1)),
              "gray": Image.new("L", (30, 30), 90), "rgba": Image.new("RGBA", (20, 20), (0, 0, 255, 0))}
    for name, im in images.items():
        im.save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"a picture called {name}")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "corrupt.txt").write_text("a broken picture")
    (src / "truncated.png").write_bytes(_png(images["ok"])[:60])
    (src / "truncated.txt").write_text("a cut-off picture")
    images["ok"].save(src / "nocaption.png")
    (src / "nocaption.txt").write_text("   ")
    before = snapshot(src)
    out = tmp_path / "out"
    argv = ["build-shards", "folder", str(src), "--out", str(out), "--image-size", "16", "--heldout-fraction", "0",
            "--no-progress"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "4 train + 0 held-out samples written" in text and "skipped 2 broken image(s), 1 without caption" in text
    samples = list(read_shard_samples(str(out / "train-00000.tar")))
    assert sorted(s[2] for s in samples) == sorted(f"a picture called {n}" for n in images)
    assert all(s[1].size == (16, 16) and s[1].mode == "RGB" for s in samples)
    written = snapshot(out)
    assert cli_main(argv) == 1  # again into the same folder
    assert one_line_error(capsys.readouterr().err).startswith("error: ")
    assert snapshot(out) == written and snapshot(src) == before


def _captioned_folder(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a red square number {i}")
    return folder


@pytest.mark.parametrize("mine", ["build_info.json", "sizes.json", "notes.txt"])
def test_build_shards_never_writes_over_or_deletes_a_users_files(tmp_path, capsys, mine):
    src = _captioned_folder(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / mine).write_text("the user's own file")
    before = snapshot(src, out)
    argv = ["build-shards", "folder", str(src), "--out", str(out), "--image-size", "16", "--no-progress"]
    assert cli_main(argv) == 1
    line = one_line_error(capsys.readouterr().err)
    if mine == "notes.txt":
        assert line == (f"error: {out}: holds 1 file(s) build-shards did not write (e.g. notes.txt); choose an empty "
                        "or new output folder, or pass --force to write beside them (never over them)"), line
    else:
        assert line.startswith(f"error: {out / mine}: build-shards did not write this file and would write over it"), line
    assert snapshot(src, out) == before
    # --force writes beside the user's files, never over them
    assert cli_main([*argv, "--force"]) == (0 if mine == "notes.txt" else 1)
    capsys.readouterr()
    assert (out / mine).read_text() == "the user's own file"
    if mine == "notes.txt":  # a second --force replaces only what build-shards wrote
        assert cli_main([*argv, "--force", "--heldout-fraction", "0"]) == 0
        assert (out / mine).read_text() == "the user's own file"
        assert sorted(p.name for p in out.iterdir()) == [".open-clip-lightclip-files.json", "build_info.json",
                                                         "notes.txt", "sizes.json", "train-00000.tar"]
        assert json.loads((out / "sizes.json").read_text()) == {"train-00000.tar": 4}
    else:
        assert snapshot(src, out) == before


def test_build_benchmark_never_writes_over_a_users_classnames(tmp_path, capsys):
    images = tmp_path / "images"
    for c in ("circle", "square"):
        (images / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 12), (90 * i, 0, 0)).save(images / c / f"{i}.png")
    out = tmp_path / "bench"
    out.mkdir()
    (out / "classnames.txt").write_text("my\nown\nclasses\n")
    (out / "README").write_text("my notes")
    before = snapshot(images, out)
    for extra in ([], ["--force"]):
        assert cli_main(["build-benchmark", str(out), "--images", str(images), *extra]) == 1
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith(f"error: {out / 'classnames.txt'}: build-benchmark did not write this file"), line
        assert snapshot(images, out) == before
    (out / "classnames.txt").unlink()
    before = snapshot(images, out)
    assert cli_main(["build-benchmark", str(out), "--images", str(images)]) == 1  # README: not its file
    assert "holds 1 file(s) build-benchmark did not write (e.g. README)" in one_line_error(capsys.readouterr().err)
    assert snapshot(images, out) == before
    assert cli_main(["build-benchmark", str(out), "--images", str(images), "--force"]) == 0
    assert cli_main(["build-benchmark", str(out), "--images", str(images), "--force"]) == 0  # its own: replaced
    assert (out / "README").read_text() == "my notes" and (out / "classnames.txt").read_text() == "circle\nsquare\n"
    # an image that does not decode is refused before it is copied into the benchmark
    (images / "circle" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert cli_main(["build-benchmark", str(tmp_path / "bench2"), "--images", str(images)]) == 1
    assert one_line_error(capsys.readouterr().err).startswith(f"error: {images / 'circle' / '9.png'}: not a decodable image")


def test_export_refuses_a_folder_with_files_and_a_truncated_checkpoint(tmp_path, capsys):
    import open_clip

    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": open_clip.create_model("LightCLIP-Tiny").state_dict()}, ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert cli_main(["export", str(ckpt), str(out), "--model", "LightCLIP-Tiny"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("error: ") and "--force" in line, line
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    before = snapshot(tmp_path)
    assert cli_main(["export", str(truncated), str(tmp_path / "new"), "--model", "LightCLIP-Tiny"]) == 1
    assert one_line_error(capsys.readouterr().err).startswith(f"error: {truncated}: cannot read it as a checkpoint")
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


# --- the trainer process: checkpoints are saved atomically; unused parameters frozen --------------------------
def test_a_crash_while_saving_epoch_n_keeps_the_previous_file_whole(tmp_path):
    from open_clip_train.params import parse_args

    parse_args(["--train-data", "x.tar", "--model", "LightCLIP-Tiny"])  # a trainer process: the seam's fixes are on
    path = tmp_path / "epoch_3.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, str(path))
    before = snapshot(path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        torch.save({"state_dict": {"w": torch.zeros(3)}, "bad": Unpicklable()}, str(path))
    assert snapshot(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["epoch_3.pt"]
    torch.save({"state_dict": {"w": torch.zeros(3)}}, str(path))
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.zeros(3))


@pytest.mark.parametrize("weights, frozen", [
    ({"instance": "0", "token": "1", "mlm": "0.5"}, ["text.text_projection", "visual.proj.weight", "visual.trunk.conv_head.bias",
                         "visual.trunk.conv_head.weight"]),
    ({"instance": "0", "token": "0", "mlm": "0.5"}, ["logit_scale", "text.text_projection", "visual.proj.weight",
                                       "visual.trunk.conv_head.bias", "visual.trunk.conv_head.weight"]),
    ({}, []),
])
def test_parameters_no_term_uses_are_frozen(weights, frozen):
    """DDP needs a gradient for every trainable parameter: with the instance term off, the pooled heads (and,
    without the token term, logit_scale) are frozen instead of running DDP with find_unused_parameters."""
    import open_clip
    from open_clip_train.params import parse_args

    flags = [x for term, w in weights.items() for x in (f"--lightclip-{term}-weight", w)]
    parse_args(["--train-data", "x.tar", "--model", "LightCLIP-Tiny", "--loss", "lightclip", *flags])
    model = open_clip.create_model("LightCLIP-Tiny", force_image_size=64)
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == frozen
    assert all(p.grad is None for p in model.parameters())  # the dry run leaves no gradient behind
    for name, b in model.named_buffers():  # nor BatchNorm statistics (it moved every one of them)
        if name.endswith("running_mean"):
            assert torch.equal(b, torch.zeros_like(b)), name
        elif name.endswith("running_var"):
            assert torch.equal(b, torch.ones_like(b)), name


def test_distillation_trains_what_the_instance_term_left(tmp_path):
    """--lightclip-instance-weight 0 with distillation: the affinity term reaches the pooled embeddings and
    logit_scale; they used to be frozen by a dry run made before the teacher was attached."""
    import open_clip
    from open_clip_train.params import parse_args

    torch.save({"state_dict": open_clip.create_model("LightCLIP-Tiny").state_dict()}, tmp_path / "teacher.pt")
    parse_args(["--train-data", "x.tar", "--model", "LightCLIP-Tiny", "--loss", "lightclip", "--device", "cpu",
                "--lightclip-instance-weight", "0", "--lightclip-mlm-weight", "0",
                "--distill-teacher", f"LightCLIP-Tiny={tmp_path / 'teacher.pt'}"])
    model = open_clip.create_model("LightCLIP-Tiny", force_image_size=64)
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == []


def test_logit_bias_created_by_loading_follows_the_models_device_and_precision(tmp_path):
    """A SigLIP-trained checkpoint loaded into a model built without logit_bias: the new parameter is made
    where the model already is (create_model moves the model before loading; DDP refuses mixed devices)."""
    import open_clip

    source = open_clip.create_model("LightCLIP-Tiny")
    state = {**source.state_dict(), "logit_bias": torch.tensor([-10.0])}
    torch.save({"state_dict": state}, tmp_path / "siglip.pt")
    model = open_clip.create_model("LightCLIP-Tiny").to(torch.float64)
    open_clip.load_checkpoint(model, str(tmp_path / "siglip.pt"))
    assert model.logit_bias.dtype == torch.float64 and model.logit_bias.device == model.logit_scale.device
    assert model.logit_bias.item() == -10.0


def _usage_error(capsys, argv) -> str:
    """The one-line error of a subcommand refusing ``argv`` at parse time (exit 2, nothing run)."""
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2
    return one_line_error(capsys.readouterr().err)


def test_subcommands_refuse_bad_values_in_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "build_info.json").write_text("{not json")
    (tmp_path / "a-file").write_text("mine")
    before = snapshot(tmp_path)
    cases = [
        (["bench", "inference", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["bench", "inference", "--device", "nonsense"], "argument --device: 'nonsense' is not a device: use cpu"),
        (["bench", "train", "--device", "nonsense"], "argument --device: 'nonsense' is not a device"),
        (["bench", "inference", "--json", str(tmp_path / "missing" / "r.json")],
         f"argument --json: folder {tmp_path / 'missing'} does not exist: create it first"),
        (["demo", "--trainer-args", "'unbalanced"], "argument --trainer-args: cannot split \"'unbalanced\" as a shell "
                                                    "would (No closing quotation): check the quotes"),
        (["demo", "--data", str(tmp_path / "data")], f"argument --data: {tmp_path / 'data' / 'build_info.json'} is not JSON"),
        (["demo", "--out", str(tmp_path / "a-file")], f"argument --out: {tmp_path / 'a-file'} is a file, not a folder"),
        (["demo", "--lr", "nan"], "argument --lr: must be a finite number, got nan"),
        (["ablate", "--heldout-fraction", "1.5"], "argument --heldout-fraction: must be in [0, 1), got 1.5"),
    ]
    for argv, expected in cases:
        line = _usage_error(capsys, argv)
        assert expected in line, (argv, line)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags, expected", [
    (["--heldout-fraction", "1.5"], "--heldout-fraction must be in [0, 1) (the share of samples held out), got 1.5"),
    (["--heldout-fraction", "nan"], "--heldout-fraction must be in [0, 1)"),
    (["--image-size", "0"], "--image-size must be >= 1, got 0"),
])
def test_build_shards_refuses_bad_sizes_before_writing_anything(tmp_path, capsys, flags, expected):
    src = _captioned_folder(tmp_path / "src")
    before = snapshot(src)
    assert cli_main(["build-shards", "folder", str(src), "--out", str(tmp_path / "out"), "--no-progress", *flags]) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"error: {expected}")
    assert not (tmp_path / "out").exists() and snapshot(src) == before


def test_bench_train_at_a_batch_size_an_arm_cannot_train_is_one_line(capsys):
    assert cli_main(["bench", "train", "--model", "LightCLIP-Tiny", "--image-size", "32", "--batch-size", "1",
                     "--arms", "cliplite", "--repeats", "1", "--warmup", "0"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("error: bench train: ") and line.endswith("; change --batch-size / --arms / --trainer-args")
