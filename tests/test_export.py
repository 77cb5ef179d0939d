"""Trainer checkpoints downstream: ``pretrained=`` loading, ``export`` (hub layout, ONNX), one-line errors."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn as nn

from open_clip_lightclip.models.checkpoint import CheckpointError, read_state_dict
from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.data.owned import MARKER
from open_clip_lightclip.export import CONFIG_NAME, IMAGE_ONNX, TEXT_ONNX, WEIGHTS_NAME, export_checkpoint, write_stock
from open_clip_lightclip.losses import list_losses
from open_clip_lightclip.models import TRAINING_ONLY_MODULES

RUNNER = Path(__file__).with_name("train_and_embed.py")
MODEL = "LightCLIP-Tiny"
TINY_UPSTREAM = {  # an upstream open_clip.CLIP (no model_class), small enough for a unit test
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _training_only_keys(keys):
    return [k for k in keys if k.removeprefix("module.").split(".")[0] in TRAINING_ONLY_MODULES]


def _fake_trainer_checkpoint(path, model_name=MODEL, ddp=True, training_only=True, seed=0, **model_kwargs):
    """What open_clip_train saves: {'epoch', 'name', 'state_dict' (module.-prefixed under DDP), 'optimizer'}."""
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, **model_kwargs)
    if training_only:
        for i, name in enumerate(TRAINING_ONLY_MODULES):
            setattr(model, name, nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)))
    prefix = "module." if ddp else ""
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "name": "run", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    for name in TRAINING_ONLY_MODULES:
        if hasattr(model, name):
            delattr(model, name)
    return model.eval()


def _embed(model, context_length, image_size=96):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, image_size, image_size, generator=gen)
    texts = open_clip.get_tokenizer(MODEL)(["a red circle on a white background", "a blue cross"])[:, :context_length]
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def _assert_same(a, b, atol=1e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.fixture
def tiny_upstream_config(tmp_path):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "TinyUpstream-Test.json").write_text(json.dumps(TINY_UPSTREAM))
    open_clip.add_model_config(cfg_dir)
    return "TinyUpstream-Test"


# --- pretrained= -----------------------------------------------------------------------------
def test_pretrained_loads_trainer_checkpoint_with_training_only_modules(tmp_path):
    ckpt = tmp_path / "epoch_1.pt"
    source = _fake_trainer_checkpoint(ckpt, ddp=True)
    assert _training_only_keys(torch.load(ckpt, weights_only=True)["state_dict"])
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(ckpt))
    assert not any(hasattr(model, n) for n in TRAINING_ONLY_MODULES)
    _assert_same(_embed(model.eval(), 32), _embed(source, 32))
    model2, preprocess2 = open_clip.create_model_from_pretrained(MODEL, pretrained=str(ckpt))
    _assert_same(_embed(model2.eval(), 32), _embed(source, 32))


def test_model_with_training_only_modules_loads_checkpoint_without_them(tmp_path):
    ckpt = tmp_path / "epoch_1.pt"
    source = _fake_trainer_checkpoint(ckpt, training_only=False, ddp=False)  # single-process run: no module.
    model = open_clip.create_model(MODEL)
    model.lightclip_train = nn.Linear(4, 4)
    open_clip.load_checkpoint(model, str(ckpt))  # strict, yet training-only keys may be missing
    _assert_same(_embed(model.eval(), 32), _embed(source, 32))


def test_upstream_model_checkpoint_with_training_only_module_loads(tmp_path, tiny_upstream_config):
    ckpt = tmp_path / "epoch_1.pt"
    source = _fake_trainer_checkpoint(ckpt, tiny_upstream_config)
    model = open_clip.create_model(tiny_upstream_config, pretrained=str(ckpt)).eval()
    assert type(model).__name__ == "CLIP"
    _assert_same(_embed(model, 16, 32), _embed(source, 16, 32))


def test_siglip_checkpoint_with_logit_bias_loads_and_exports(tmp_path):
    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt, init_logit_bias=-10.0)
    model = open_clip.create_model(MODEL, pretrained=str(ckpt))
    assert model.logit_bias is not None and float(model.logit_bias.detach()) == -10.0
    export_checkpoint(ckpt, tmp_path / "out", model_name=MODEL, log=lambda s: None)
    reloaded = open_clip.create_model(f"local-dir:{tmp_path / 'out'}")
    assert float(reloaded.logit_bias.detach()) == -10.0


def test_strictness_kept_for_other_keys(tmp_path):
    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt)
    sd = torch.load(ckpt, weights_only=True)
    sd["state_dict"]["module.visual.extra_head.weight"] = torch.zeros(2)
    torch.save(sd, ckpt)
    with pytest.raises(CheckpointError, match=r"epoch_1\.pt: not a checkpoint of this architecture.*extra_head"):
        open_clip.create_model(MODEL, pretrained=str(ckpt))


# --- export ----------------------------------------------------------------------------------
def test_export_writes_stock_open_clip_model_by_default(tmp_path, capsys):
    ckpt = tmp_path / "epoch_1.pt"
    source = _fake_trainer_checkpoint(ckpt)
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt), str(out), "--model", MODEL]) == 0
    printed = capsys.readouterr().out
    assert "parameters before:" in printed and "parameters after:" in printed
    assert "without the plugin as CLIP" in printed and "no model_class" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md", MARKER])
    config = json.loads((out / CONFIG_NAME).read_text())
    assert "model_class" not in config["model_cfg"] and set(config["preprocess_cfg"]) >= {"mean", "std"}
    assert config["model_cfg"]["vision_cfg"]["timm_proj"] == ""  # the trunk's classifier is the projection
    exported = read_state_dict(out / WEIGHTS_NAME)
    assert not _training_only_keys(exported)
    for p in out.iterdir():  # world-readable, as a published model is
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert type(model).__name__ == "CLIP"
    _assert_same(_embed(model.eval(), 32), _embed(source, 32), atol=1e-5)
    assert open_clip.get_tokenizer(f"local-dir:{out}").context_length == 32
    after = int(printed.split("parameters after:")[1].split()[0].replace(",", ""))
    assert after == sum(p.numel() for p in model.parameters())


def test_export_plugin_format_keeps_the_plugin_layout(tmp_path, capsys):
    ckpt = tmp_path / "epoch_1.pt"
    source = _fake_trainer_checkpoint(ckpt)
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt), str(out), "--model", MODEL, "--plugin-format"]) == 0
    printed = capsys.readouterr().out
    before = int(printed.split("parameters before: ")[1].split()[0].replace(",", ""))
    after = int(printed.split("parameters after:")[1].split()[0].replace(",", ""))
    assert before - after == len(TRAINING_ONLY_MODULES) * (4 * 8 + 8 + 8 + 8)  # one dummy module per training-only name
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, MARKER])
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["model_cfg"]["model_class"] == "LightCLIP" and set(config["preprocess_cfg"]) >= {"mean", "std"}
    exported = read_state_dict(out / WEIGHTS_NAME)
    assert not _training_only_keys(exported)
    assert set(exported) == set(source.state_dict())
    assert stat.S_IMODE((out / WEIGHTS_NAME).stat().st_mode) == 0o644
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    _assert_same(_embed(model.eval(), 32), _embed(source, 32))
    assert open_clip.get_tokenizer(f"local-dir:{out}").context_length == 32
    assert after == sum(p.numel() for p in model.parameters())


def test_export_rewrites_its_own_folder_but_never_a_users_file(tmp_path, capsys):
    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt, training_only=False)
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt), str(out), "--model", MODEL]) == 0
    assert cli_main(["export", str(ckpt), str(out), "--model", MODEL, "--plugin-format"]) == 0  # its own files
    assert json.loads((out / CONFIG_NAME).read_text())["model_cfg"]["model_class"] == "LightCLIP"
    users = tmp_path / "users"
    users.mkdir()
    (users / WEIGHTS_NAME).write_bytes(b"my weights")
    for extra in ([], ["--force"]):
        err = _one_line_error(capsys, ["export", str(ckpt), str(users), "--model", MODEL, *extra])
        assert "did not write this file" in err
        assert (users / WEIGHTS_NAME).read_bytes() == b"my weights"


def test_export_refuses_non_empty_out_dir_without_force(tmp_path, capsys):
    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt, training_only=False)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["export", str(ckpt), str(out), "--model", MODEL]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "--force" in err
    assert not (out / WEIGHTS_NAME).exists()
    assert cli_main(["export", str(ckpt), str(out), "--model", MODEL, "--force"]) == 0
    assert (out / WEIGHTS_NAME).is_file() and (out / "keep.txt").read_text() == "mine"


def _one_line_error(capsys, argv):
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_corrupt_or_mismatched_inputs_give_one_line_errors(tmp_path, capsys, tiny_upstream_config):
    good = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(good, training_only=False)
    out = str(tmp_path / "out")

    err = _one_line_error(capsys, ["export", str(tmp_path / "missing.pt"), out, "--model", MODEL])
    assert "missing.pt: no such file" in err

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    err = _one_line_error(capsys, ["export", str(truncated), out, "--model", MODEL])
    assert "truncated.pt: cannot read it as a checkpoint (truncated or corrupt file?)" in err

    truncated_st = tmp_path / "truncated.safetensors"
    truncated_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    err = _one_line_error(capsys, ["export", str(truncated_st), out, "--model", MODEL])
    assert "truncated.safetensors: cannot read it" in err

    other = tmp_path / "other_arch.pt"
    _fake_trainer_checkpoint(other, tiny_upstream_config)
    err = _one_line_error(capsys, ["export", str(other), out, "--model", MODEL])
    assert "other_arch.pt: not a checkpoint of this architecture" in err and "missing" in err

    err = _one_line_error(capsys, ["export", str(good), out, "--model", "LightCLIP-MNv3-S"])
    assert "epoch_1.pt: not a checkpoint of this architecture" in err and "shape mismatches" in err

    not_ckpt = tmp_path / "notes.pt"
    torch.save({"hello": "world"}, not_ckpt)
    err = _one_line_error(capsys, ["export", str(not_ckpt), out, "--model", MODEL])
    assert "notes.pt: not a model checkpoint" in err

    err = _one_line_error(capsys, ["export", str(good), out])  # no params.txt next to it
    assert "epoch_1.pt" in err and "--model" in err

    # the same one-line errors through the Python API (what clip_benchmark and apps call)
    with pytest.raises(CheckpointError, match=r"truncated\.pt: cannot read it") as info:
        open_clip.create_model_and_transforms(MODEL, pretrained=str(truncated))
    assert "\n" not in str(info.value)


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnx onnxruntime)")
    pytest.importorskip("onnx", reason="onnx not installed (pip install onnx onnxruntime)")
    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt)
    out = tmp_path / "exported"
    report = export_checkpoint(ckpt, out, model_name=MODEL, onnx=True, log=lambda s: None)
    assert set(report.onnx_max_abs_diff) == {IMAGE_ONNX, TEXT_ONNX}
    model = open_clip.create_model(f"local-dir:{out}").eval()
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(5, 3, 96, 96, generator=gen)  # batch size other than the traced one
    texts = open_clip.get_tokenizer(f"local-dir:{out}")(
        ["a red circle", "a blue square on a beige background", "x", "a green cross on a white background", ""])
    with torch.no_grad():
        expected = {IMAGE_ONNX: model.encode_image(images).numpy(), TEXT_ONNX: model.encode_text(texts).numpy()}
    for name, x in ((IMAGE_ONNX, images), (TEXT_ONNX, texts)):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == expected[name].shape
        assert abs(got - expected[name]).max() < 1e-4, name


# --- a real trainer run ----------------------------------------------------------------------
@pytest.mark.slow
def test_trainer_checkpoint_loads_exports_and_reloads_with_training_embeddings(train, tmp_path, capsys):
    loss = "lightclip" if "lightclip" in list_losses() else "clip"
    embed_out = tmp_path / "embeddings.pt"
    heads = ["--lightclip-mlm-weight", "0.5"] if loss == "lightclip" else []  # MLM's heads: training-only modules
    _, ckpt_dir = train(model=MODEL, loss=loss, extra=["--force-image-size", "64", *heads], runner=RUNNER,
                        env={"EMBED_OUT": str(embed_out)})
    checkpoint = ckpt_dir / "epoch_1.pt"
    if loss == "clip":  # no objective attaches training-only modules yet: add one as a trainer would
        ckpt = torch.load(checkpoint, weights_only=True)
        prefix = "module." if next(iter(ckpt["state_dict"])).startswith("module.") else ""
        ckpt["state_dict"].update({f"{prefix}lightclip_train.weight": torch.ones(8, 4),
                                   f"{prefix}lightclip_train.bias": torch.ones(8)})
        torch.save(ckpt, checkpoint)
    trained_keys = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert _training_only_keys(trained_keys), f"--loss {loss} left no training-only module in the checkpoint"
    expected = torch.load(embed_out, weights_only=True)

    def check(model):
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(expected["images"]), expected["image"], rtol=0, atol=1e-6)
            torch.testing.assert_close(model.encode_text(expected["texts"]), expected["text"], rtol=0, atol=1e-6)

    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(checkpoint),
                                                                 force_image_size=64)
    check(model)
    out = tmp_path / "exported"
    assert cli_main(["export", str(checkpoint), str(out)]) == 0  # model and image size from params.txt
    printed = capsys.readouterr().out
    assert f"model: {MODEL}" in printed and "parameters before:" in printed and "parameters after:" in printed
    assert not _training_only_keys(read_state_dict(out / WEIGHTS_NAME))
    reloaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert preprocess.transforms[0].size == 64  # --force-image-size 64 of the run
    check(reloaded)


# --- stock OpenCLIP, without the plugin ------------------------------------------------------
SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "model_configs").glob("*.json"))
TIMM_NAMES = ["LightCLIP-Tiny+resnet10t", "LightCLIP-Tiny+convnext_atto"]  # BASE+TIMM_NAME
STOCK_RUNNER = r"""
import sys, torch
import open_clip
assert 'open_clip_lightclip' not in sys.modules
for out in sys.argv[1:]:
    model, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + out)
    x = torch.load(out + '.inputs.pt', weights_only=True)
    with torch.no_grad():
        got = {'image': model.eval().encode_image(x['images'], normalize=True),
               'text': model.encode_text(x['texts'], normalize=True)}
    got['cls'] = type(model).__name__
    got['context_length'] = open_clip.get_tokenizer('local-dir:' + out).context_length
    torch.save(got, out + '.result.pt')
assert 'open_clip_lightclip' not in sys.modules, 'the plugin was imported'
"""


def _randomise_batchnorm(model):
    """Trained BatchNorm statistics, so that a wrong mapping of the classifier's BatchNorm (RepViT) shows."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _export_stock_models(tmp_path, names, image_size=64):
    """Each model random at ``image_size``, written as a stock model; its inputs and embeddings saved beside it."""
    expected = {}
    for name in names:
        torch.manual_seed(0)
        model = open_clip.create_model(name, force_image_size=image_size).eval()
        _randomise_batchnorm(model)
        cfg = open_clip.get_model_config(name)
        cfg["vision_cfg"]["image_size"] = image_size
        out = tmp_path / name
        write_stock(model, cfg, out)
        context_length = cfg["text_cfg"]["context_length"]
        images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
        texts = open_clip.get_tokenizer(name)(["a red circle", "a blue cross on a white background", ""])
        torch.save({"images": images, "texts": texts[:, :context_length]}, f"{out}.inputs.pt")
        with torch.no_grad():
            expected[name] = (model.encode_image(images, normalize=True),
                              model.encode_text(texts[:, :context_length], normalize=True))
    return expected


def _check_stock_models(tmp_path, expected, python=sys.executable, env=None):
    env = {**os.environ, "OPEN_CLIP_LIGHTCLIP_DISABLE": "1"} if env is None else env
    env = {**env, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same summation order as this process
    proc = subprocess.run([python, "-c", STOCK_RUNNER, *(str(tmp_path / n) for n in expected)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, (image, text) in expected.items():
        got = torch.load(f"{tmp_path / name}.result.pt", weights_only=True)
        assert got["cls"] == "CLIP", name
        assert "model_class" not in json.loads((tmp_path / name / CONFIG_NAME).read_text())["model_cfg"]
        torch.testing.assert_close(got["image"], image, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got["text"], text, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_every_shipped_config_exports_to_stock_open_clip_with_equal_embeddings(tmp_path):
    """OpenCLIP with the plugin off (OPEN_CLIP_LIGHTCLIP_DISABLE=1, never imported) rebuilds every shipped
    config and BASE+TIMM_NAME names from the exported folder with the plugin's embeddings (<= 1e-5)."""
    assert len(SHIPPED) >= 10
    _check_stock_models(tmp_path, _export_stock_models(tmp_path, SHIPPED + TIMM_NAMES))


def test_reparameterisable_tower_exports_unfused_for_stock_and_says_so(tmp_path, capsys):
    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt, "LightCLIP-MobileOne-S0", force_image_size=64)
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt), str(out), "--model", "LightCLIP-MobileOne-S0"]) == 0
    printed = capsys.readouterr().out
    assert "written unfused" in printed and "--onnx writes the fused graph" in printed
    cfg = json.loads((out / CONFIG_NAME).read_text())["model_cfg"]
    assert "timm_reparameterized" not in cfg["vision_cfg"] and "model_class" not in cfg


def _plugin_free_venv(path: Path) -> Path:
    """A venv whose site-packages links every package of this one except open-clip-lightclip (no .pth either):
    OpenCLIP, timm and torch as installed here, the plugin absent."""
    import site
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    target = next(path.glob("lib/python*/site-packages"))
    source = Path(next(p for p in site.getsitepackages() if Path(p, "open_clip").is_dir()))
    for entry in source.iterdir():
        name = entry.name.lower()
        if "lightclip" in name or name.endswith(".pth") or name.startswith(("_editable", "__editable")):
            continue
        if not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    return path / "bin" / "python"


@pytest.mark.slow
@pytest.mark.extended
def test_exported_models_load_in_a_venv_without_the_plugin(tmp_path):
    """The strongest proof: an interpreter in which open_clip_lightclip cannot even be imported."""
    python = _plugin_free_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("OPEN_CLIP_LIGHTCLIP_DISABLE", "PYTHONPATH")}
    probe = subprocess.run([python, "-c", "import importlib.util, open_clip; "
                            "print(importlib.util.find_spec('open_clip_lightclip'), open_clip.__version__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0 and probe.stdout.startswith("None 3.3"), probe.stdout + probe.stderr[-2000:]
    names = ["LightCLIP-Tiny", "LightCLIP-MNv3", "LightCLIP-EffB0", "LightCLIP-MNv4-S", "LightCLIP-RepViT-M0.9",
             "LightCLIP-MCi0", "LightCLIP-EfficientViT-B0", "LightCLIP-MobileOne-S0", "LightCLIP-Tiny+resnet10t"]
    _check_stock_models(tmp_path, _export_stock_models(tmp_path, names), python=str(python), env=env)


# --- Hugging Face Hub: model card and --push ---------------------------------------------------
def _fake_run(tmp_path, with_metrics=True):
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_2.pt"
    ckpt.parent.mkdir(parents=True)
    _fake_trainer_checkpoint(ckpt, force_image_size=64)
    (tmp_path / "run" / "params.txt").write_text(
        f"model: {MODEL}\nloss: lightclip\nlightclip_mlm_weight: 0.5\ntrain_data: /data/clipart/{{00000..00009}}.tar\n"
        "dataset_type: webdataset\nepochs: 2\nbatch_size: 64\nforce_image_size: [64]\n")
    if with_metrics:
        (ckpt.parent / "results.jsonl").write_text(json.dumps({"image_to_text_R@1": 0.05, "epoch": 1}) + "\n"
                                                   + json.dumps({"image_to_text_R@1": 0.125, "epoch": 2}) + "\n")
    return ckpt


def test_model_card_has_hub_metadata_towers_training_metrics_and_usage(tmp_path, capsys):
    ckpt = _fake_run(tmp_path)
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt), str(out), "--license", "apache-2.0"]) == 0
    card = (out / "README.md").read_text()
    meta, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: open_clip" in meta and "license: apache-2.0" in meta and "- timm:mobilenetv3_small_050" in meta
    model = open_clip.create_model(f"local-dir:{out}")
    visual = sum(p.numel() for p in model.visual.parameters())
    assert f"| {visual:,} |" in body and "MB" in body  # parameters (and MB) per tower
    assert "`--loss lightclip`" in body and "/data/clipart/{00000..00009}.tar" in body and "lightclip_mlm_weight" in body
    assert "| image_to_text_R@1 | 0.125 |" in body and "0.05" not in body  # the last evaluation the run logged
    assert "create_model_and_transforms('local-dir:" in body and "@article{nie2023lightclip" in body
    assert stat.S_IMODE((out / "README.md").stat().st_mode) == 0o644
    no_metrics = _fake_run(tmp_path / "b", with_metrics=False)
    assert cli_main(["export", str(no_metrics), str(tmp_path / "b" / "out")]) == 0
    assert "no metrics are claimed" in (tmp_path / "b" / "out" / "README.md").read_text()


@pytest.mark.extended
@pytest.mark.parametrize("upstream_usable", [True, False])
def test_push_uploads_the_exported_model_with_its_card(tmp_path, capsys, monkeypatch, upstream_usable):
    """Upstream's open_clip.push_to_hf_hub when it can run; OpenCLIP 3.3.0 + huggingface_hub >= 1 cannot
    (a removed import), then create_repo + upload_folder of the folder. The upload is stubbed."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    hub = sys.modules["open_clip.push_to_hf_hub"]
    uploaded, calls = tmp_path / "uploaded", {}

    class FakeTokenizer:  # upstream swaps the CLIP tokenizer for openai's HF one (a download)
        def __init__(self, *args, **kwargs):
            pass

        def save_pretrained(self, path):
            Path(path, "tokenizer.json").write_text("{}")

    def upload_folder(repo_id, folder_path, **kwargs):
        import shutil
        calls["upload"] = repo_id
        if "ignore_patterns" in kwargs:
            calls["ignore"] = kwargs["ignore_patterns"]
        shutil.copytree(folder_path, uploaded)
        return "https://huggingface.co/me/tiny/commit/0"

    def create_repo(repo_id, token=None, **kwargs):
        calls.update(token=token)
        return f"https://huggingface.co/{repo_id}"

    if upstream_usable:
        monkeypatch.setattr(hub, "_has_hf_hub", True)
        monkeypatch.setattr(hub, "EntryNotFoundError", EntryNotFoundError, raising=False)
        monkeypatch.setattr(hub, "HFTokenizer", FakeTokenizer)
        monkeypatch.setattr(hub, "create_repo", create_repo, raising=False)
        monkeypatch.setattr(hub, "repo_type_and_id_from_hf_id", lambda url: (None, *url.split("/")[-2:]),
                            raising=False)
        monkeypatch.setattr(hub, "list_repo_files", lambda repo_id: (_ for _ in ()).throw(RuntimeError("new")),
                            raising=False)
        monkeypatch.setattr(hub, "hf_hub_url", lambda **kw: "url", raising=False)
        monkeypatch.setattr(hub, "get_hf_file_metadata", lambda url: (_ for _ in ()).throw(EntryNotFoundError("none")),
                            raising=False)
        monkeypatch.setattr(hub, "upload_folder", upload_folder, raising=False)
    else:
        monkeypatch.setattr(hub, "_has_hf_hub", False)
        monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    ckpt = _fake_run(tmp_path)

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no token: one line, nothing uploaded
    err = _one_line_error(capsys, ["export", str(ckpt), str(tmp_path / "a"), "--push", "me/tiny"])
    assert "token" in err and "upload" not in calls

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    assert cli_main(["export", str(ckpt), str(tmp_path / "b"), "--push", "me/tiny"]) == 0
    assert calls["token"] == "hf_test" and calls["upload"] == "me/tiny" and "pushed" in capsys.readouterr().out
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md"} <= {p.name for p in uploaded.iterdir()}
    if not upstream_usable:  # the folder as exported and checked, without the list of export's own files
        assert calls["ignore"] == [MARKER]
    readme = (uploaded / "README.md").read_text()
    assert "library_name: open_clip" in readme and "hf-hub:me/tiny" in readme and "| image_to_text_R@1 |" in readme
    uploaded_cfg = json.loads((uploaded / "open_clip_config.json").read_text())["model_cfg"]
    assert "model_class" not in uploaded_cfg
    assert set(read_state_dict(uploaded / "open_clip_model.safetensors")) == set(
        read_state_dict(tmp_path / "b" / "open_clip_model.safetensors"))


@pytest.mark.slow
@pytest.mark.extended  # ~40 s of ONNX conversion and quantisation: make test-extended
def test_onnx_precisions_written_loaded_and_compared(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnx onnxruntime)")
    pytest.importorskip("onnx", reason="onnx not installed (pip install onnx onnxruntime)")
    from open_clip_lightclip.export import COSINE_THRESHOLD, precision_files

    ckpt = tmp_path / "epoch_1.pt"
    _fake_trainer_checkpoint(ckpt, force_image_size=64)
    out = tmp_path / "exported"
    lines = []
    report = export_checkpoint(ckpt, out, model_name=MODEL, onnx_precision=["fp32", "fp16", "int8"], onnx=True,
                               log=lines.append)
    got = {(r.precision, r.tower): r for r in report.onnx_precisions}
    assert set(got) == {(p, t) for p in ("fp32", "fp16", "int8") for t in ("image", "text")}
    for precision in ("fp16", "int8"):
        for name in precision_files(precision):
            assert (out / name).is_file() and stat.S_IMODE((out / name).stat().st_mode) == 0o644
    for (precision, tower), r in got.items():
        assert r.path.name in precision_files(precision) and r.mb > 0
        assert -1.0 <= r.min_cosine <= 1.0 + 1e-5
        printed = [s for s in lines if s.strip().startswith(r.path.name + ":")]
        assert len(printed) == 1 and f"{r.mb:.2f} MB" in printed[0] and f"{r.min_cosine:.5f}" in printed[0]
        if r.precision == "fp32":
            assert r.min_cosine > 0.9999
    assert got["fp16", "text"].mb < 0.6 * got["fp32", "text"].mb
    assert got["int8", "text"].mb < 0.35 * got["fp32", "text"].mb
    for precision in ("fp16", "int8"):  # below the threshold it is said, never hidden
        worst = min(got[precision, t].min_cosine for t in ("image", "text"))
        flagged = any(s.strip().startswith(f"precision {precision} loses more than") for s in lines)
        assert flagged == (worst < COSINE_THRESHOLD)
    assert "int8.onnx" in (out / "README.md").read_text()
    # a bad precision is refused in one line, before anything is written
    assert cli_main(["export", str(ckpt), str(tmp_path / "bad"), "--model", MODEL, "--onnx-precision", "fp32", "int4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'int4'" in err and "fp32 fp16 int8" in err
    assert not (tmp_path / "bad").exists()
