"""`open-clip-lightclip bench train`: the table's shape (never its timings), and a light --help."""
from conftest import run_python
from open_clip_lightclip.cli import main


def test_cli_help_does_not_import_torch():
    code = "import sys, open_clip_lightclip.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert run_python(["-c", code]).stdout.strip() == "False"


def test_bench_train_prints_one_row_per_arm(capsys):
    argv = ["bench", "train", "--model", "LightCLIP-Tiny", "--image-size", "64", "--batch-size", "4",
            "--repeats", "1", "--warmup", "0", "--arms", "clip", "lightclip all", "clip untrimmed"]
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| arm | step (s, median) | ratio to clip |")
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["clip", "lightclip all", "clip untrimmed"]
    assert rows[1].split("|")[3].strip() == "1.00x"


def test_bench_train_global_batch_rows(capsys):
    argv = ["bench", "train", "--model", "LightCLIP-Tiny", "--image-size", "64", "--batch-size", "4",
            "--repeats", "1", "--global-batch", "4", "16"]
    assert main(argv) == 0
    rows = [line.split("|")[1:3] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [(a.strip(), b.strip()) for a, b in rows] == [
        ("4", "instance"), ("4", "token"), ("16", "instance"), ("16", "token")]
