"""The package's rooms: the import contract holds and bites, and the wheel carries every room and config."""
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env

ROOMS = ("models", "losses", "data", "upstream", "export", "studies", "benchmarks", "commands")
BIN = Path(sys.executable).parent


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env(PYTHONPATH=str(cwd)), timeout=300)


def test_every_room_says_what_lives_there_and_what_it_may_import():
    for room in ROOMS:
        doc = (REPO / "open_clip_lightclip" / room / "__init__.py").read_text()
        assert doc.startswith('"""'), room
        assert "import" in doc.split('"""')[1], f"{room}/__init__.py does not say what it may import"


def test_import_contract_breaks_when_losses_import_the_seam(tmp_path):
    """The contract of pyproject.toml is kept by the tree, and broken by one upward import."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "open_clip_lightclip", copy / "open_clip_lightclip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    kept = _lint_imports(copy)
    assert kept.returncode == 0, kept.stdout[-3000:]
    with open(copy / "open_clip_lightclip" / "losses" / "distributed.py", "a") as f:
        f.write("\nfrom ..upstream import hooks  # noqa: E402,F401\n")
    broken = _lint_imports(copy)
    assert broken.returncode != 0
    text = " ".join(broken.stdout.split())
    assert "open_clip_lightclip.losses is not allowed to import open_clip_lightclip.upstream" in text


@pytest.mark.slow
def test_wheel_holds_every_room_and_config_and_starts_without_torch(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, env=subprocess_env(), timeout=300)
    (wheel,) = dist.glob("open_clip_lightclip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for room in ROOMS:
        assert f"open_clip_lightclip/{room}/__init__.py" in names, room
    configs = {n.rsplit("/", 1)[1] for n in names if n.startswith("open_clip_lightclip/model_configs/")}
    assert configs == {p.name for p in (REPO / "model_configs").glob("*.json")}
    assert "open_clip_lightclip.pth" in names
    assert not any(n.startswith("tests/") for n in names)

    # a fresh venv with the wheel; torch and OpenCLIP come from this venv, after the wheel on sys.path
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, env=subprocess_env(), timeout=300)

    start = subprocess.run([str(python), "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                           cwd=tmp_path, env=subprocess_env(), timeout=60)
    imported = {line.split("|")[-1].strip() for line in start.stderr.splitlines() if line.startswith("import time:")}
    assert "open_clip_lightclip.upstream.autoload" in imported
    assert "torch" not in imported

    code = ("import open_clip, open_clip_lightclip as p; "
            "print(p.__file__); print(sorted(m for m in open_clip.list_models() if m.startswith('LightCLIP'))); "
            "m = open_clip.create_model('LightCLIP-Tiny'); print(type(m).__module__)")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, models, module = proc.stdout.splitlines()
    assert where.startswith(str(site)), where
    assert eval(models) == sorted(p.stem for p in (REPO / "model_configs").glob("*.json"))
    assert module == "open_clip_lightclip.models.lightclip"
