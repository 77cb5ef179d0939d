"""Fail narrow (issue 26 item 4): errors say their real cause, and only the plugin's anticipated errors print as
one line; any other exception keeps its traceback. Through the real trainer (``open_clip_train.main``)."""
import textwrap

import pytest
import torch

from test_reliability import one_line_error


def _runner(tmp_path, exception: str):
    """The real trainer, with OpenCLIP's ``create_model_and_transforms`` raising ``exception`` for the teacher (the
    trainer's own import of it, made first, still builds the student)."""
    path = tmp_path / "runner.py"
    path.write_text(textwrap.dedent(f"""
        import sys

        import open_clip
        import torch
        from open_clip_train.main import main


        def fail(*args, **kwargs):
            raise {exception}


        open_clip.create_model_and_transforms = fail
        main(sys.argv[1:])
    """))
    return path


def _teacher(tmp_path) -> list:
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(b"never read")
    return ["--force-image-size", "64", "--distill-teacher", f"LightCLIP-Tiny={weights}"]


@pytest.mark.slow
def test_out_of_memory_while_loading_a_teacher_says_so(train, tmp_path):
    runner = _runner(tmp_path, 'torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")')
    proc, _ = train(extra=_teacher(tmp_path), runner=runner, check=False)
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert line.startswith(f"error: teacher 'LightCLIP-Tiny={tmp_path / 'teacher.pt'}': out of memory while loading it "
                           "on cpu (CUDA out of memory. Tried to allocate 2.00 GiB); free memory, or precompute"), line
    assert "check the model name" not in line


@pytest.mark.slow
def test_a_bug_while_loading_a_teacher_keeps_its_traceback(train, tmp_path):
    """Not an anticipated error (no name, tag, file or memory problem): the traceback, not 'check the model name'."""
    runner = _runner(tmp_path, 'AttributeError("\'NoneType\' object has no attribute \'visual\'")')
    proc, _ = train(extra=_teacher(tmp_path), runner=runner, check=False)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "\nAttributeError: 'NoneType' object has no attribute 'visual'\n" in proc.stderr
    assert "check the model name" not in proc.stderr


@pytest.mark.slow
def test_resume_of_a_folder_says_folder_not_corrupt(train, tmp_path):
    """An OSError is not 'truncated or corrupt file?'."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    proc, _ = train(loss=None, extra=["--resume", str(folder)], check=False)
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert line.startswith(f"error: {folder}: a folder, not a checkpoint file (name a file in it, e.g. epoch_N.pt)"), line


@pytest.mark.parametrize("exc,expected", [
    (PermissionError(13, "Permission denied"), "cannot read the file (PermissionError: [Errno 13] Permission denied); "
                                               "check its permissions and the disk or network it is on"),
    (OSError(5, "Input/output error"), "cannot read the file (OSError: [Errno 5] Input/output error)"),
    (torch.OutOfMemoryError("CUDA out of memory"), "out of memory while reading it"),
    (OSError(22, "Invalid argument"), "(truncated or corrupt file?)"),  # torch's reader seeking past the end
    (EOFError("Ran out of input"), "cannot read it as a checkpoint (truncated or corrupt file?): EOFError"),
    (RuntimeError("PytorchStreamReader failed reading zip archive"), "(truncated or corrupt file?)"),
])
def test_unreadable_checkpoint_errors_name_their_cause(exc, expected):
    """What the trainer's ``--resume`` (``pt_load``) and ``pretrained=`` raise, by cause."""
    from open_clip_lightclip.models.checkpoint import CheckpointError, unreadable

    error = unreadable("run/epoch_3.pt", exc)
    assert isinstance(error, CheckpointError) and str(error).startswith("run/epoch_3.pt: ")
    assert expected in str(error)


def test_resume_read_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """An exception no file explains, raised while the trainer's ``pt_load`` reads ``--resume``: the exception
    itself, not a CheckpointError (which the excepthook would print as one line)."""
    import open_clip_train.file_utils as file_utils
    from open_clip_lightclip.upstream.errors import one_line

    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(TypeError("bug in a loader")))
    with pytest.raises(TypeError, match="bug in a loader") as info:
        file_utils.pt_load(str(path), map_location="cpu")
    assert one_line(info.value, resume=str(path)) is None


def test_a_state_dict_mismatch_outside_the_resume_load_keeps_its_traceback():
    """Only the trainer's own ``model.load_state_dict(sd)`` of ``--resume`` is the user's to fix in one line."""
    from open_clip_lightclip.upstream.errors import one_line

    try:
        torch.nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(3, 2)})
    except RuntimeError as e:
        assert "Error(s) in loading state_dict" in str(e)
        assert one_line(e, resume="epoch_1.pt") is None


@pytest.mark.slow
@pytest.mark.extended
def test_resume_with_other_heads_stops_and_a_finished_resume_says_nothing_is_left(train, tmp_path):
    """--resume of a checkpoint whose training heads differ (MLM heads missing from the file) stops in one line
    naming the --pretrained fix; one that already reached --epochs says so instead of exiting 0 without a word."""
    extra = ["--force-image-size", "64", "--lightclip-mlm-weight", "0"]
    _, ckpt_dir = train(loss="lightclip", extra=extra, name="first")
    ckpt = ckpt_dir / "epoch_1.pt"
    proc, _ = train(loss="lightclip", extra=["--force-image-size", "64", "--resume", str(ckpt)], name="heads",
                    epochs=2, check=False)
    assert proc.returncode != 0
    line = one_line_error(proc.stderr)
    assert line.startswith(f"error: --resume {ckpt}: the checkpoint does not fit this run's model ("), line
    assert f"start a new run from its weights with --pretrained {ckpt}" in line
    proc, _ = train(loss="lightclip", extra=[*extra, "--resume", str(ckpt)], name="done", epochs=1)
    assert (f"--resume {ckpt} finished epoch 1 and --epochs is 1: nothing left to train; raise --epochs to train on"
            in proc.stdout + proc.stderr)
