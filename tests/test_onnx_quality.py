"""int8 ONNX with calibration (``export --calibration-data``) and the quality cost of each precision
(``bench inference --onnx-dir --heldout``), on tiny shards built here."""
import json
import stat

import open_clip
import pytest
import torch

from open_clip_lightclip.benchmarks._precisions import PRECISION_COLUMNS, precision_table, worse_lines
from open_clip_lightclip.cli import main as cli_main
from open_clip_lightclip.data.shards import write_shards
from open_clip_lightclip.data.synthetic import SHAPES, synthetic_samples, write_synthetic_shards

MODEL = "LightCLIP-Tiny"


def _checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def _heldout_shards(root, num=24):
    """Captioned shapes with their shape as the category (zero-shot classes), a seed no calibration shard uses."""
    samples = []
    for key, image, caption in synthetic_samples(num, image_size=64, seed=777):
        shape = next(s for s in SHAPES if f" {s} " in caption)
        samples.append((key, image, caption, {"category": shape}))
    write_shards(samples, root, "heldout", samples_per_shard=num)
    return str(root / "heldout-00000.tar")


def _table(out):
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == PRECISION_COLUMNS
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
@pytest.mark.extended  # ~40 s: two exports with int8 quantisation, then six held-out evaluations
def test_static_int8_with_calibration_and_measured_deltas(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnx onnxruntime)")
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install onnx onnxruntime)")
    from open_clip_lightclip.export.evaluate import evaluate_model, load_eval_data
    from open_clip_lightclip.export.precision import read_metadata

    ckpt = tmp_path / "epoch_1.pt"
    _checkpoint(ckpt)
    write_synthetic_shards(tmp_path / "shards", num_samples=32, samples_per_shard=16, seed=3)
    calibration = str(tmp_path / "shards" / "train-{00000..00001}.tar")
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    assert cli_main(["export", str(ckpt), str(static), "--model", MODEL, "--onnx-precision", "fp32", "int8",
                     "--calibration-data", calibration, "--calibration-samples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "int8: image tower static QDQ" in printed and "20 images from" in printed and "text tower dynamic" in printed
    assert cli_main(["export", str(ckpt), str(dynamic), "--model", MODEL, "--onnx-precision", "fp32", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "no --calibration-data, so the image tower is dynamic too" in printed

    image_int8 = static / "image_encoder.int8.onnx"
    assert stat.S_IMODE(image_int8.stat().st_mode) == 0o644
    assert "static QDQ" in read_metadata(image_int8) and "20 images" in read_metadata(image_int8)
    assert "dynamic" in read_metadata(static / "text_encoder.int8.onnx")
    assert "dynamic" in read_metadata(dynamic / "image_encoder.int8.onnx")
    session = ort.InferenceSession(str(image_int8), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(image_int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    (emb,) = session.run(None, {"image": torch.randn(2, 3, 96, 96).numpy()})
    assert emb.shape == (2, 128)

    heldout = _heldout_shards(tmp_path / "heldout")
    out_json = tmp_path / "bench.json"
    assert cli_main(["bench", "inference", "--onnx-dir", str(static), str(dynamic), "--heldout", heldout,
                     "--repeats", "2", "--warmup", "0", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert [(r[0], r[1]) for r in rows] == [(str(static), "fp32"), (str(static), "int8"),
                                          (str(dynamic), "fp32"), (str(dynamic), "int8")]
    measured = json.loads(out_json.read_text())
    for r, m in zip(rows, measured):
        assert float(r[2]) > 0 and float(r[3]) > 0 and float(r[4]) > 0 and float(r[5]) > 0  # MB, ms
        assert r[7] == f"{m['retrieval_delta']:+.2f}" and r[9] == f"{m['zeroshot_delta']:+.2f}"
        worse = m["retrieval_delta"] < -1 or m["zeroshot_delta"] < -1
        assert r[10] == ("reference" if m["precision"] == "fp32" else "WORSE (> 1 pt)" if worse else "ok (<= 1 pt)")
        assert (f"WORSE: {m['folder']} {m['precision']} loses" in out) == (worse and m["precision"] != "fp32")
    assert float(rows[1][4]) > 0 and float(rows[0][7]) == 0.0 and float(rows[0][9]) == 0.0
    assert f"{static} int8: image tower int8 static QDQ" in out
    assert "zero-shot = top-1 on clip-art categories (4 classes, 24 images)" in out

    # the fp32 ONNX row is what the same evaluator gives the exported PyTorch model
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{static}")
    with torch.no_grad():
        ref = evaluate_model(model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{static}"),
                             load_eval_data(heldout))
    recall = 100 * sum(v for k, v in ref.items() if "_R@" in k) / 6
    assert abs(measured[0]["retrieval"] - recall) < 1e-6
    assert abs(measured[0]["zeroshot"] - 100 * ref["clipart_zeroshot"]) < 1e-6


def _one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_calibration_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnx onnxruntime)")
    pytest.importorskip("onnx", reason="onnx not installed (pip install onnx onnxruntime)")
    ckpt = tmp_path / "epoch_1.pt"
    _checkpoint(ckpt)
    base = ["export", str(ckpt), str(tmp_path / "out"), "--model", MODEL]
    missing = str(tmp_path / "nope" / "train-{00000..00001}.tar")
    assert cli_main(base + ["--onnx-precision", "fp32", "int8", "--calibration-data", missing]) == 1
    err = _one_line(capsys)
    assert "--calibration-data" in err and "nope/train-00000.tar is not a file" in err and "e.g." in err
    (tmp_path / "text.tar").write_text("not a tar")
    assert cli_main(base + ["--onnx-precision", "int8", "--calibration-data", str(tmp_path / "text.tar")]) == 1
    assert "is not a tar file" in _one_line(capsys)
    assert cli_main(base + ["--calibration-data", missing]) == 1  # no int8 asked for
    assert "--onnx-precision fp32 int8" in _one_line(capsys)
    assert cli_main(base + ["--onnx-precision", "int8", "--int8-image", "static"]) == 1
    assert "--int8-image static needs calibration images" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_bench_onnx_dir_bad_inputs_are_one_line(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnx onnxruntime)")
    assert cli_main(["bench", "inference", "--onnx-dir", str(tmp_path)]) == 2
    assert "--onnx-dir and --heldout go together" in _one_line(capsys)
    assert cli_main(["bench", "inference", "--onnx-dir", str(tmp_path), "--heldout", "x.tar"]) == 2
    assert "has no open_clip_config.json" in _one_line(capsys)
    assert cli_main(["bench", "inference", "--onnx-dir", str(tmp_path / "missing"), "--heldout", "x.tar"]) == 2
    assert "is not a folder" in _one_line(capsys)


def test_precision_table_marks_what_loses_more_than_the_stated_drop():
    rows = [{"folder": "out", "precision": p, "image_mb": 1.0, "text_mb": 2.0, "image_ms": 1.0, "text_ms": 2.0,
             "retrieval": 20 + d_r, "retrieval_delta": d_r, "zeroshot": 30 + d_z, "zeroshot_delta": d_z}
            for p, d_r, d_z in (("fp32", 0.0, 0.0), ("fp16", -0.5, 0.2), ("int8", -0.2, -1.5))]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in precision_table(rows).splitlines()[2:]]
    assert [r[10] for r in table] == ["reference", "ok (<= 1 pt)", "WORSE (> 1 pt)"]
    assert table[2][7:10] == ["-0.20", "28.50", "-1.50"]
    assert worse_lines(rows) == ["WORSE: out int8 loses more than 1 point vs fp32 ONNX: zero-shot top-1 -1.50 points"]
    assert worse_lines(rows, max_drop=2.0) == []
    assert "WORSE" in precision_table(rows, max_drop=0.4).splitlines()[3]  # fp16's -0.5 then counts


def test_static_int8_from_calibration_shards_loads_in_onnxruntime(tmp_path):
    """The quantiser itself, on a small conv net: QDQ nodes, calibration images read from shards built here."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnx onnxruntime)")
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install onnx onnxruntime)")
    from open_clip_lightclip.export.precision import (calibration_images, eval_transform, read_metadata,
                                                      write_precisions)

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    for name, inp in (("image_encoder.onnx", "image"), ("text_encoder.onnx", "text")):
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(tmp_path / name), dynamo=False, input_names=[inp],
                          output_names=["out"], dynamic_axes={inp: {0: "batch"}, "out": {0: "batch"}})
    write_synthetic_shards(tmp_path / "shards", num_samples=12, samples_per_shard=8, seed=4)
    images = calibration_images(str(tmp_path / "shards" / "train-{00000..00001}.tar"), 10, eval_transform(32))
    assert images.shape == (10, 3, 32, 32)
    written = write_precisions(tmp_path, ["fp32", "int8"], calibration=images, calibration_source="shards")
    image_int8 = tmp_path / "image_encoder.int8.onnx"
    assert "static QDQ" in written[image_int8] and "10 images from shards" in read_metadata(image_int8)
    assert "dynamic" in written[tmp_path / "text_encoder.int8.onnx"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(image_int8)).graph.node}
    session = ort.InferenceSession(str(image_int8), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": images[:3]})
    with torch.no_grad():
        ref = net(torch.from_numpy(images[:3]))
    assert got.shape == (3, 4) and torch.nn.functional.cosine_similarity(torch.from_numpy(got), ref).min() > 0.9
