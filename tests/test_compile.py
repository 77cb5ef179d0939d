"""``--torchcompile`` through the real trainer for every objective: several steps with captions of changing
length; the number of recompilations is bounded and reported (``TORCH_LOGS=recompiles``)."""
from pathlib import Path

import pytest
import torch
from conftest import run_python

from open_clip_lightclip.upstream.trainer_cmd import trainer_command

RUNNER = Path(__file__).parent / "compile_runner.py"
MAX_RECOMPILES = 1  # the first step compiles; the last, smaller batch of an epoch may make the batch dynamic once


@pytest.fixture(scope="module")
def varied_shards(tmp_path_factory):
    """32 captioned shapes whose captions grow from 8 to 24 words, so every batch of 8 has another longest
    caption (the text shape changes from step to step, as with real data)."""
    from open_clip_lightclip.data.shards import write_shards
    from open_clip_lightclip.data.synthetic import synthetic_samples

    def varied():
        for i, (key, image, caption) in enumerate(synthetic_samples(32, image_size=64)):
            yield key, image, caption.replace(" on", " very" * (2 * (i // 8) + i % 3) + " on")

    root = tmp_path_factory.mktemp("varied")
    write_shards(varied(), root, "train", 32)
    return str(root / "train-00000.tar")


@pytest.mark.slow
@pytest.mark.parametrize("loss,extra", [
    pytest.param("clip", [], marks=pytest.mark.extended),  # the plain forward: also traced by the distilled student
    ("lightclip", []),  # the default: instance + token + MLM with fusion
    pytest.param("cliplite", [], marks=pytest.mark.extended),  # the plain forward, another loss (not compiled)
    pytest.param("clip", ["distill"], marks=pytest.mark.extended),
])
def test_torchcompile_trains_every_objective_with_bounded_recompiles(varied_shards, tmp_path, loss, extra):
    flags = ["--force-image-size", "64", "--torchcompile", "--log-every-n-steps", "1"]
    if extra == ["distill"]:
        import open_clip

        torch.save({"state_dict": open_clip.create_model("LightCLIP-Tiny").state_dict()}, tmp_path / "teacher.pt")
        flags += ["--distill-teacher", f"LightCLIP-Tiny={tmp_path / 'teacher.pt'}", "--distill-feature-weight", "1"]
    cmd = trainer_command(varied_shards, str(tmp_path / "logs"), "run", model="LightCLIP-Tiny", loss=loss,
                          batch_size=8, epochs=1, warmup=1, extra=["--workers", "0", *flags])
    proc = run_python([str(RUNNER), *cmd[3:]], TORCH_LOGS="recompiles,graph_breaks")
    ckpt_dir = tmp_path / "logs" / "run" / "checkpoints"
    log = (ckpt_dir.parent / "out.log").read_text()
    steps = log.count("Train Epoch: 0 [")
    output = proc.stdout + proc.stderr
    recompiles, breaks = output.count("Recompiling function"), output.count("Graph break from")
    print(f"{loss}{'+distill' if extra else ''}: {steps} steps, {recompiles} recompilations, {breaks} graph breaks")
    assert steps == 4 and (ckpt_dir / "epoch_1.pt").is_file()
    # under torch.compile the model reads no value (no graph break) and keeps static shapes, as on a GPU
    assert recompiles <= MAX_RECOMPILES and breaks == 0


def test_mlm_masking_traces_with_symbolic_shapes():
    """MLM's masking under torch.compile with dynamic shapes (what a recompilation for a new caption length
    makes): ``torch.rand(text.shape, generator=None)`` raised 'SymIntArrayRef expected to contain only concrete
    integers' on the second step."""
    import open_clip

    from open_clip_lightclip.models.lightclip import text_word_mask
    from open_clip_lightclip.models.train_heads import mask_tokens

    compiled = torch.compile(lambda t: mask_tokens(t, text_word_mask(t), 0.15), dynamic=True, backend="aot_eager")
    tok = open_clip.get_tokenizer("LightCLIP-Tiny")
    for captions in (["a red circle", "a cat"], ["a much longer caption about a blue square", "x", "y z"]):
        text = tok(captions)[:, :12]
        selected, use_mask, ids = compiled(text)
        assert selected.shape == text.shape and (selected.sum(1) == 1).all()
