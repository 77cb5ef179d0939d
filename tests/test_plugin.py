"""The plugin registers itself on `import open_clip`, with no import by the user."""
import textwrap

import pytest

from conftest import REPO, run_python
from open_clip_lightclip.upstream.hooks import check_open_clip_version

PLUGIN_MODELS = sorted(p.stem for p in (REPO / "model_configs").glob("*.json"))


def test_plain_interpreter_start_does_not_import_torch():
    proc = run_python(["-c", "import sys; print('torch' in sys.modules, 'open_clip_lightclip.upstream.autoload' in sys.modules)"])
    assert proc.stdout.split() == ["False", "True"]


def test_import_open_clip_lists_models_without_importing_plugin(tmp_path):
    code = textwrap.dedent("""
        import open_clip
        print(','.join(m for m in open_clip.list_models() if m.startswith('LightCLIP')))
        tok = open_clip.get_tokenizer('LightCLIP-MNv3')
        print(tuple(tok(['a photo of a dog']).shape))
    """)
    proc = run_python(["-c", code], cwd=tmp_path)  # not the checkout: the installed plugin must do it
    lines = proc.stdout.splitlines()
    assert sorted(lines[0].split(",")) == PLUGIN_MODELS
    assert lines[1] == "(1, 77)"


def test_env_var_turns_plugin_off(tmp_path):
    code = ("import sys, open_clip; "
            "print(any(m.startswith('LightCLIP') for m in open_clip.list_models()), 'open_clip_lightclip' in sys.modules)")
    proc = run_python(["-c", code], cwd=tmp_path, OPEN_CLIP_LIGHTCLIP_DISABLE="1")
    assert proc.stdout.split() == ["False", "False"]


_FAKE_VERSION = textwrap.dedent("""
    import importlib.util, sys

    class FakeVersion:  # the installed OpenCLIP, reporting another release
        def find_spec(self, name, path=None, target=None):
            return importlib.util.spec_from_loader(name, self) if name == "open_clip.version" else None
        def create_module(self, spec):
            return None
        def exec_module(self, module):
            module.__version__ = "3.4.1"

    sys.meta_path.insert(0, FakeVersion())
""")


def test_unsupported_open_clip_version_warns_once_and_leaves_open_clip_working(tmp_path):
    """Fail narrow: an OpenCLIP outside the range made `import open_clip` itself raise (every program in the venv
    broke); now one warning, and OpenCLIP and its trainer work as upstream's, without the plugin."""
    code = _FAKE_VERSION + textwrap.dedent("""
        import open_clip
        from open_clip_train.params import parse_args
        import open_clip_train.main, open_clip_train.data, open_clip_train.file_utils
        print(open_clip.__version__, any(m.startswith('LightCLIP') for m in open_clip.list_models()),
              hasattr(open_clip.create_loss, '__wrapped__'), 'loss' in vars(parse_args(['--train-data', 'x.tar'])),
              tuple(open_clip.get_tokenizer('ViT-B-32')(['a dog']).shape))
    """)
    proc = run_python(["-c", code], cwd=tmp_path)
    assert proc.stdout.split() == ["3.4.1", "False", "False", "False", "(1,", "77)"]
    lines = [line for line in proc.stderr.splitlines() if "open-clip-lightclip" in line]
    assert lines == ["open-clip-lightclip supports open_clip_torch>=3.3,<3.4, found open_clip_torch 3.4.1: the plugin is "
                     "off and OpenCLIP works without it; `pip install 'open_clip_torch>=3.3,<3.4'` turns it on "
                     "(OPEN_CLIP_LIGHTCLIP_DISABLE=1 silences this warning)"], proc.stderr


@pytest.mark.parametrize("version,ok", [("3.3.0", True), ("3.3.12", True), ("3.2.0", False), ("3.4.0", False),
                                        ("4.0.0", False), ("unknown", False)])
def test_version_range(version, ok):
    if ok:
        check_open_clip_version(version)
    else:
        with pytest.raises(ImportError, match=r"supports open_clip_torch>=3\.3,<3\.4"):
            check_open_clip_version(version)


def test_an_openclip_with_an_older_diff_is_one_line_naming_the_fix():
    """An OpenCLIP patched with an earlier patches/ diff (a loss registry, no train hooks) is neither pristine
    (the runtime seam would add --loss twice) nor hooked (distillation could not register): refused."""
    import types

    from open_clip_lightclip.upstream.hooks import upstream_has_hooks

    old = types.SimpleNamespace(__file__="/x/open_clip/__init__.py", factory=types.SimpleNamespace(
        register_loss=1, register_model_class=1, register_training_only_module=1))
    with pytest.raises(ImportError, match=r"^/x/open_clip carries an older patches/open_clip-3\.3\.0\.diff .*: apply "):
        upstream_has_hooks(old)
    assert not upstream_has_hooks(types.SimpleNamespace(factory=types.SimpleNamespace()))


def test_trainer_help_lists_plugin_flags():
    proc = run_python(["-m", "open_clip_train.main", "--help"])
    assert "--loss {clip,siglip" in proc.stdout
    assert "open-clip-lightclip" in proc.stdout


def _trainer_error(*argv):
    proc = run_python(["-m", "open_clip_train.main", "--train-data", "x.tar", "--device", "cpu", *argv], check=False)
    assert proc.returncode == 2, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_unknown_loss_is_a_one_line_error():
    line = _trainer_error("--model", "LightCLIP-Tiny", "--loss", "infonce")
    assert "argument --loss: invalid choice: 'infonce' (choose from " in line
    assert "clip" in line and "siglip" in line


def test_unknown_model_is_a_one_line_error_with_suggestion():
    line = _trainer_error("--model", "LightCLIP-MNv5", "--loss", "clip")
    assert "unknown model 'LightCLIP-MNv5': did you mean LightCLIP-MNv3" in line
    assert "open_clip.list_models()" in line


def test_siglip_flag_conflicting_with_loss_is_refused():
    line = _trainer_error("--model", "LightCLIP-Tiny", "--loss", "clip", "--siglip")
    assert "--siglip conflicts with --loss clip" in line


def test_create_model_unknown_name_names_the_choices():
    import open_clip

    with pytest.raises(RuntimeError, match="'LightCLIP-Nope' not found in built-ins. Available: .*LightCLIP-MNv3"):
        open_clip.create_model("LightCLIP-Nope")
