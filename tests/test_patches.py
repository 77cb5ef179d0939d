"""patches/open_clip-3.3.0.diff applies to pristine OpenCLIP 3.3.0 and its hooks work without the plugin.

The installed ``open_clip`` / ``open_clip_train`` are unmodified on disk (the plugin patches them in
memory only), so they are copied into a tmp tree laid out as upstream's repo (``src/...``), patched
with ``patch -p1`` and imported from there by a child Python with the plugin turned off.
"""
import importlib.util
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


def _run(src: Path, args, cwd: Path):
    env = subprocess_env(OPEN_CLIP_LIGHTCLIP_DISABLE="1", PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
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
    assert "open_clip_lightclip" not in sys.modules, "plugin is on"
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
    print("HOOKS OK")
''')


def test_diff_applies_and_hooks_work(patched_src, tmp_path):
    proc = _run(patched_src, ["-c", CHILD, str(patched_src)], cwd=tmp_path)
    assert "HOOKS OK" in proc.stdout


def test_patched_trainer_help_lists_loss(patched_src, tmp_path):
    proc = _run(patched_src, ["-m", "open_clip_train.main", "--help"], cwd=tmp_path)
    assert "--loss" in proc.stdout and "{clip,siglip}" in proc.stdout, proc.stdout[-2000:]
