"""``open-clip-lightclip bench inference``: the table's shape (not its timings)."""
import json

import pytest

from open_clip_lightclip.benchmarks.inference import COLUMNS
from open_clip_lightclip.cli import build_parser, main as cli_main


def test_bench_has_inference_subcommand():
    parser = build_parser()
    args = parser.parse_args(["bench", "inference", "--models", "LightCLIP-Tiny"])
    assert args.benchmark == "inference" and args.models == ["LightCLIP-Tiny"] and args.threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])  # a benchmark name is required


def test_bench_inference_table(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert cli_main(["bench", "inference", "--models", "LightCLIP-Tiny", "--repeats", "2", "--warmup", "0",
                     "--json", str(out_json)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("LightCLIP-Tiny", "image"), ("LightCLIP-Tiny", "text")]
    for r in rows:
        assert len(r) == len(COLUMNS)
        assert all(r[i].endswith("x") for i in (5, 8, 11))  # ratios
        assert r[8] == "1.000x"  # same towers: same MACs
        assert r[5] == "1.000x"  # same parameters (the baseline's projection has a bias: +embed_dim)
        float(r[9]), float(r[10])  # latencies in ms
    measured = json.loads(out_json.read_text())["LightCLIP-Tiny"]
    image, text = measured
    assert image["macs"]["light"] == image["macs"]["plain"] > 0
    assert text["params"]["light"] == text["params"]["plain"]
    assert image["params"]["plain"] - image["params"]["light"] == 128  # timm classifier bias (embed_dim 128)


def test_bench_inference_unknown_model(capsys):
    assert cli_main(["bench", "inference", "--models", "NoSuchModel"]) == 1
    err = capsys.readouterr().err.strip()
    assert "NoSuchModel" in err and "\n" not in err


def test_bench_inference_towers_table_fuses_what_is_fusable(capsys):
    from open_clip_lightclip.benchmarks.inference import TOWER_COLUMNS

    assert cli_main(["bench", "inference", "--towers", "--models", "LightCLIP-Tiny", "LightCLIP-RepViT-M0.9",
                     "--repeats", "1", "--warmup", "0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == TOWER_COLUMNS
    tiny, repvit = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    assert tiny[:5] == ["LightCLIP-Tiny", "`mobilenetv3_small_050`", "1x3x96x96", "699 k", "same"]
    assert repvit[1] == "`repvit_m0_9`" and repvit[4] != "same" and repvit[6] != "same"
    assert float(repvit[9]) > 0  # ONNX Runtime latency of the fused model (onnxruntime is a test dependency)


def test_bench_inference_prints_progress_per_config(capsys):
    assert cli_main(["bench", "inference", "--towers", "--models", "LightCLIP-Tiny", "LightCLIP-Tiny",
                     "--repeats", "1", "--warmup", "0"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[bench inference] ")]
    done = [line for line in err if " done in " in line]
    assert [line.split(" ")[2] for line in done] == ["1/2", "2/2"]
    assert all("elapsed " in line and "ETA " in line for line in done)
    assert "ETA unknown" not in done[0] and done[-1].endswith("ETA 0s")
