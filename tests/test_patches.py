"""patches/open_clip-3.3.0.diff applies to pristine OpenCLIP 3.3.0 and its hooks work without the plugin.

The installed ``open_clip`` / ``open_clip_train`` are unmodified on disk (the plugin patches them in
memory only), so they are copied into a tmp tree laid out as upstream's repo (``src/...``), patched
with ``patch -p1`` and imported from there by a child Python with the plugin turned off.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env

DIFF = REPO / "patches" / "open_clip-3.3.0.diff"
PATCH = shutil.which("patch")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates without executing it
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def patched_src(tmp_path_factory):
    if PATCH is None:
        pytest.skip("the `patch` program is not installed (apt-get install patch)")
    open_clip_dir = _package_dir("open_clip")
    version = (open_clip_dir / "version.py").read_text()
    if "'3.3.0'" not in version and '"3.3.0"' not in version:
        pytest.skip(f"the diff targets open_clip 3.3.0; installed: {version.strip()}")
    root = tmp_path_factory.mktemp("upstream")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("open_clip", "open_clip_train"):
        shutil.copytree(_package_dir(name), root / "src" / name, ignore=ignore)
    dry = subprocess.run([PATCH, "-p1", "--dry-run", "-i", str(DIFF)], cwd=root, capture_output=True, text=True)
    assert dry.returncode == 0, f"diff does not apply:\n{dry.stdout}\n{dry.stderr}"
    proc = subprocess.run([PATCH, "-p1", "-i", str(DIFF)], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, f"patch failed:\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout.lower()
    assert "offset" not in out and "fuzz" not in out and "reject" not in out, f"not a clean apply:\n{proc.stdout}"
    assert not list(root.rglob("*.rej")) and not list(root.rglob("*.orig"))
    return root / "src"


def _run(src: Path, args, cwd: Path, plugin: bool = False):
    """A child Python on the patched sources; the plugin off (``OPEN_CLIP_LIGHTCLIP_DISABLE=1``) unless ``plugin``."""
    env = subprocess_env(PYTHONPATH=str(src), HF_HUB_OFFLINE="1", **({} if plugin else {"OPEN_CLIP_LIGHTCLIP_DISABLE": "1"}))
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


CHILD = textwrap.dedent(r'''
    import argparse, json, sys, tempfile
    from pathlib import Path
    import torch
    import open_clip
    from open_clip import factory

    src = Path(sys.argv[1])
    assert Path(open_clip.__file__).resolve().is_relative_to(src.resolve()), open_clip.__file__
    # the plugin is off: its entry point registers nothing, and nothing is patched
    assert not any(m.startswith("LightCLIP") for m in open_clip.list_models()), "plugin is on"
    assert "lightclip" not in open_clip.list_losses(), "plugin is on"
    assert not hasattr(factory.create_loss, "__wrapped__")

    # loss registry
    assert {"clip", "siglip"} <= set(open_clip.list_losses()), open_clip.list_losses()
    base = dict(distill=False, model="ViT-B-32", local_loss=False, gather_with_grad=False, rank=0,
                world_size=1, horovod=False, loss_dist_impl=None, siglip=False)
    assert type(open_clip.create_loss(argparse.Namespace(**base))).__name__ == "ClipLoss"  # upstream path
    assert type(open_clip.create_loss(argparse.Namespace(**base, loss="siglip"))).__name__ == "SigLipLoss"
    made = []
    open_clip.register_loss("toy", lambda args: made.append(args) or torch.nn.Identity())
    assert "toy" in open_clip.list_losses()
    assert isinstance(open_clip.create_loss(argparse.Namespace(**base, loss="toy")), torch.nn.Identity) and made

    # model-class registry
    text_cfg = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
    tmp = Path(tempfile.mkdtemp())
    (tmp / "Toy-Registered.json").write_text(json.dumps({
        "embed_dim": 32, "model_class": "toy_clip", "text_cfg": text_cfg,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32}}))
    (tmp / "Toy-MobileNetV3.json").write_text(json.dumps({
        "embed_dim": 32, "text_cfg": text_cfg,
        "vision_cfg": {"timm_model_name": "mobilenetv3_large_100", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear", "image_size": 64}}))
    open_clip.add_model_config(tmp)

    class ToyCLIP(open_clip.CLIP):
        TRAINING_ONLY_MODULES = ("aux_head",)

    open_clip.register_model_class("toy_clip", ToyCLIP)
    model = open_clip.create_model("Toy-Registered")
    assert type(model) is ToyCLIP, type(model)

    # load_checkpoint: keys of modules the model lists as training-only are optional both ways
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["aux_head.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp / "ckpt.pt")
    open_clip.load_checkpoint(model, str(tmp / "ckpt.pt"))  # strict; aux_head ignored
    del state["aux_head.weight"]
    torch.save(state, tmp / "plain.pt")
    model.aux_head = torch.nn.Linear(2, 2)
    open_clip.load_checkpoint(model, str(tmp / "plain.pt"))  # strict; the model's aux_head is not required
    del state["logit_scale"]
    torch.save(state, tmp / "bad.pt")
    try:
        open_clip.load_checkpoint(model, str(tmp / "bad.pt"))
    except RuntimeError as e:
        assert "logit_scale" in str(e), e
    else:
        raise AssertionError("a missing non-training-only key must still fail under strict")

    # TimmModel: projection sized from head_hidden_size (MobileNetV3: 1280, not num_features 960)
    mnv3 = open_clip.create_model("Toy-MobileNetV3").eval()
    with torch.no_grad():
        feats = mnv3.encode_image(torch.randn(1, 3, 64, 64))
    assert tuple(feats.shape) == (1, 32), feats.shape

    # training progress recorded by the scheduler factories
    from open_clip_train.scheduler import PROGRESS, cosine_lr
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    adjust = cosine_lr(opt, 1.0, 2, 10)
    adjust(5)
    assert (PROGRESS.step, PROGRESS.total_steps, PROGRESS.fraction) == (5, 10, 0.5)

    # --loss and per-loss flags in the trainer's parser
    from open_clip_train.params import parse_args
    def add_toy2(group):
        group.add_argument("--toy-weight", type=float, default=1.0)
    def check_toy2(args):
        if args.toy_weight < 0:
            raise ValueError("--toy-weight must be >= 0")
    open_clip.register_loss("toy2", torch.nn.Identity, add_args=add_toy2, check_args=check_toy2)
    args = parse_args(["--loss", "toy2", "--toy-weight", "0.5"])
    assert args.loss == "toy2" and args.toy_weight == 0.5
    assert parse_args(["--loss", "siglip"]).siglip is True
    assert parse_args([]).loss is None

    # train hooks (every --loss): their flags and checks in the parser, the loss wrapped, a data stage
    def check_hook(args):
        if args.toy_hook < 0:
            raise ValueError("--toy-hook must be >= 0")
    wrapped = []
    open_clip.register_train_hook("toy hook", add_args=lambda g: g.add_argument("--toy-hook", type=int, default=0),
                                  check_args=check_hook, wrap_loss=lambda loss, a: wrapped.append(a.toy_hook) or loss,
                                  sample_stage=lambda a: "STAGE" if a.toy_hook else None)
    assert [h.name for h in open_clip.list_train_hooks()] == ["toy hook"]
    args = parse_args(["--loss", "toy2", "--toy-hook", "3"])
    assert isinstance(open_clip.create_loss(args), torch.nn.Identity) and wrapped == [3]
    from open_clip_train.data import _sample_stage
    assert _sample_stage(args) == "STAGE" and _sample_stage(parse_args(["--loss", "toy2"])) != "STAGE"
    try:
        parse_args(["--toy-hook", "-1"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a hook's check_args error must stop the parser")
    print("HOOKS OK")
''')


def test_diff_applies_and_hooks_work(patched_src, tmp_path):
    proc = _run(patched_src, ["-c", CHILD, str(patched_src)], cwd=tmp_path)
    assert "HOOKS OK" in proc.stdout


def test_patched_trainer_help_lists_loss(patched_src, tmp_path):
    proc = _run(patched_src, ["-m", "open_clip_train.main", "--help"], cwd=tmp_path)
    assert "--loss" in proc.stdout and "{clip,siglip}" in proc.stdout, proc.stdout[-2000:]


IDLE = textwrap.dedent(r'''
    import logging, open_clip
    from open_clip import factory
    from open_clip_train.params import parse_args
    assert not hasattr(factory.create_loss, "__wrapped__")  # the diff's registry, not the runtime hooks
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parse_args(["--train-data", "x.tar", "--model", "LightCLIP-Tiny", "--loss", "lightclip",
                "--lightclip-token-weight", "0", "--lightclip-matching", "hungarian", "--cliplite-prior-weight", "0.1"])
''')


@pytest.mark.extended
def test_the_diffs_route_warns_of_flags_that_train_nothing(patched_src, tmp_path):
    """The plugin's idle-flag lines (one builder) reach the diff's route through its train hook's check."""
    err = _run(patched_src, ["-c", IDLE], cwd=tmp_path, plugin=True).stderr.strip().splitlines()
    assert err == ["--lightclip-matching hungarian trains nothing while the token term is off "
                   "(--lightclip-token-weight 0)",
                   "--cliplite-prior-weight 0.1 trains nothing with --loss lightclip (it belongs to --loss cliplite)"], err


# Runs the real trainer (``open_clip_train.main``) in a process where the plugin is ON, then checks that
# nothing of OpenCLIP or its trainer was patched at run time: the diff's hooks carried everything.
RUNNER = textwrap.dedent(r'''
    import argparse, runpy, sys
    runpy.run_module("open_clip_train.main", run_name="__main__")
    import open_clip
    from open_clip import factory, model
    from open_clip_train import file_utils, params, scheduler
    from open_clip_lightclip.upstream import hooks
    assert factory.CLIP is model.CLIP, factory.CLIP
    for fn in (factory.create_loss, factory.load_checkpoint, scheduler.cosine_lr, file_utils.pt_load):
        assert not hasattr(fn, "__wrapped__"), fn
    assert params.argparse is argparse
    assert not {"open_clip", "params", "scheduler", "file_utils"} & hooks._INSTALLED, hooks._INSTALLED
    print("NO RUNTIME PATCHES")
''')

LOAD = textwrap.dedent(r'''
    import sys, torch, open_clip
    assert open_clip.load_checkpoint.__module__ == "open_clip.factory" and not hasattr(open_clip.load_checkpoint, "__wrapped__")
    for ckpt in sys.argv[1:]:
        keys = torch.load(ckpt, map_location="cpu")["state_dict"].keys()
        assert any(k.startswith(("lightclip_train.", "cliplite_prior.")) for k in keys), ckpt  # training-only keys
        model, _, preprocess = open_clip.create_model_and_transforms("LightCLIP-Tiny", pretrained=ckpt,
                                                                   force_image_size=64)  # strict load
        assert type(model).__name__ == "LightCLIP" and not hasattr(model, "lightclip_train")
        with torch.no_grad():
            img = model.encode_image(torch.randn(2, 3, 64, 64))
            txt = model.encode_text(open_clip.get_tokenizer("LightCLIP-Tiny")(["a red circle", "a blue square"]))
        assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    print("LOADED", len(sys.argv) - 1)
''')


@pytest.mark.slow
@pytest.mark.extended
def test_the_diff_alone_trains_every_plugin_loss_and_loads_its_checkpoints(patched_src, train, tmp_path):
    """Runtime patching off (an OpenCLIP with the hooks is left alone): the plugin registers through the diff's
    plugin API (its ``open_clip.plugins`` entry point), trains --loss lightclip and --loss cliplite with the prior
    through the real trainer, and the checkpoints load with ``create_model_and_transforms``."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {"PYTHONPATH": str(patched_src), "HF_HUB_OFFLINE": "1"}
    checkpoints = []
    for name, loss, extra in (("lc", "lightclip", ["--lightclip-soft-label-max", "0.3", "--lightclip-token-weight", "1",
                                                       "--lightclip-mlm-weight", "0.5"]),
                              ("cl", "cliplite", ["--cliplite-prior-weight", "0.1"])):
        proc, ckpt_dir = train(loss=loss, name=name, runner=runner, env=env,
                               extra=["--force-image-size", "64", "--epochs", "2", *extra])
        assert "NO RUNTIME PATCHES" in proc.stdout, proc.stdout[-2000:]
        log = (ckpt_dir.parent / "out.log").read_text()
        assert re.search(r"Loss: [\d.]+", log), log[-2000:]
        checkpoints.append(str(ckpt_dir / "epoch_2.pt"))
    lc_log = (tmp_path / "logs" / "lc" / "out.log").read_text()
    assert "Instance_loss" in lc_log and "Token_loss" in lc_log and "Mlm_loss" in lc_log
    assert "lightclip soft labels: step 0/8" in lc_log  # the schedule reads upstream's PROGRESS (2 epochs x 4 steps)
    # what runs is said at start-up and e(t) rides on every per-step line, as on the runtime-hook route
    assert "--loss lightclip: instance x1 (soft labels e(t) linear 0 -> 0.3" in lc_log, lc_log[-2000:]
    assert re.findall(r"Train Epoch: .* e\(t\): ([\d.]+)", lc_log), lc_log[-2000:]
    assert "Cliplite_prior" in (tmp_path / "logs" / "cl" / "out.log").read_text()
    proc = _run(patched_src, ["-c", LOAD, *checkpoints], cwd=tmp_path, plugin=True)
    assert "LOADED 2" in proc.stdout


@pytest.mark.slow
@pytest.mark.extended
def test_distillation_trains_through_the_diffs_train_hook(patched_src, train, tiny_shards, tmp_path):
    """Distillation works with every --loss on the diff's route too: the plugin registers it as a train hook
    (flags, checks, teachers on the trainer's model, the loss wrapped, the cached-embedding data stage), and the
    real trainer distils online and from `cache-teacher` shards with no runtime patch in the process."""
    import open_clip
    import torch

    from conftest import run_python
    from open_clip_lightclip.cli import main as cli_main
    from open_clip_lightclip.upstream.trainer_cmd import trainer_command

    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save({"epoch": 1, "state_dict": open_clip.create_model("LightCLIP-Tiny").state_dict()}, teacher)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {"PYTHONPATH": str(patched_src), "HF_HUB_OFFLINE": "1"}
    spec = f"LightCLIP-Tiny={teacher}"
    proc, _ = train(loss="cliplite", name="online", runner=runner, env=env,
                    extra=["--force-image-size", "64", "--distill-teacher", spec, "--distill-feature-weight", "1"])
    log = (tmp_path / "logs" / "online" / "out.log").read_text()
    assert "NO RUNTIME PATCHES" in proc.stdout and f"distilling from {spec} (online;" in proc.stdout + proc.stderr + log
    assert "Distill_affinity_loss" in log and "Distill_feature_loss" in log and "Cliplite_jsd" in log

    cache = tmp_path / "cached"
    assert cli_main(["cache-teacher", tiny_shards, "--out", str(cache), "--teacher", spec, "--batch-size", "16"]) == 0
    cmd = trainer_command(str(cache / "train-{00000..00001}.tar"), str(tmp_path / "logs"), "cached", model="LightCLIP-Tiny",
                          loss="clip", batch_size=8, epochs=1, warmup=1,
                          extra=["--workers", "0", "--force-image-size", "64", "--distill-cache"])
    cmd[1:3] = [str(runner)]
    proc = run_python(cmd[1:], **env)
    log = (tmp_path / "logs" / "cached" / "out.log").read_text()
    assert "NO RUNTIME PATCHES" in proc.stdout and "(cached embeddings;" in proc.stdout + proc.stderr + log
    assert "Distill_affinity_loss" in log and "Contrastive_loss" in log

    bad = run_python(["-m", "open_clip_train.main", "--train-data", tiny_shards, "--model", "LightCLIP-Tiny",
                      "--distill-teacher", spec], check=False, **env)  # no --loss: the hook's check stops it
    assert bad.returncode == 2 and "work with the plugin's objectives: add --loss" in bad.stderr


@pytest.mark.slow
@pytest.mark.extended
def test_reinforced_training_is_refused_on_the_diffs_route_in_one_line(patched_src, train, tmp_path):
    """The diff's train-hook API has no stage for the augmentation: `--distill-reinforced` would train on fresh
    crops without a word, so it stops at parse time instead."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    proc, _ = train(runner=runner, env={"PYTHONPATH": str(patched_src), "HF_HUB_OFFLINE": "1"},
                    extra=["--distill-reinforced"], check=False)
    assert proc.returncode == 2 and "an OpenCLIP carrying patches/ leaves out" in proc.stderr, proc.stderr[-2000:]
