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


def test_global_batch_table_has_work_columns_that_grow_with_the_batch(capsys):
    argv = ["bench", "train", "--model", "LightCLIP-Tiny", "--image-size", "64", "--batch-size", "4",
            "--repeats", "1", "--warmup", "0", "--global-batch", "4", "16"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[5:8] == [" GFLOP ", " GB moved ", " step ratio to clip "]
    token = {int(c[1]): (float(c[5]), float(c[6])) for c in (r.split("|") for r in lines[1:]) if c[2].strip() == "token"}
    # local-loss rows: 4 local images x global texts (and the reverse): 4x the global batch is ~4x the work
    assert 3.5 < token[16][0] / token[4][0] < 4.5
    assert all(r.split("|")[7].strip().endswith("x") for r in lines[1:])


def test_count_work_on_a_matrix_product():
    import torch
    from open_clip_lightclip.benchmarks._train_steps import count_work

    a, b = torch.ones(2, 3), torch.ones(3, 4)
    flops, moved = count_work(lambda: a @ b)
    assert flops == 2 * 2 * 3 * 4  # multiply-adds x 2
    assert moved == (6 + 12 + 8) * 4  # both inputs read, the output written, fp32


def test_count_work_counts_no_bytes_for_views():
    import torch
    from open_clip_lightclip.benchmarks._train_steps import count_work

    a = torch.ones(4, 6)
    assert count_work(lambda: a.view(6, 4).t().unsqueeze(0)) == (0, 0)


def test_bench_train_prints_progress_per_arm_and_round(capsys):
    """A line per arm and round as it finishes, with the time so far and an ETA, on stderr (the table stays alone
    on stdout)."""
    argv = ["bench", "train", "--model", "LightCLIP-Tiny", "--image-size", "64", "--batch-size", "4",
            "--repeats", "2", "--warmup", "1", "--arms", "clip", "siglip"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("[bench train] ")]
    steps = [line for line in lines if ", arm " in line]
    assert [line[len("[bench train] "):].split(": ")[0] for line in steps] == [
        f"{phase}, arm {i}/2 {arm}" for phase in ("warm-up 1/1", "round 1/2", "round 2/2", "memory")
        for i, arm in ((1, "clip"), (2, "siglip"))]
    assert all("elapsed " in line and "ETA " in line for line in steps)
    assert steps[-1].endswith("ETA 0s")
    assert "[bench train]" not in captured.out
