"""The documentation a user follows: README.md and docs/*.md.

- every relative link resolves to a file or folder of the repository, and every ``#anchor`` into a
  Markdown file names one of its headings (GitHub's slugs);
- the README's quick start runs as typed: its ``export`` line, on a trainer-format checkpoint of
  ``LightCLIP-Tiny`` where the quick start's training command leaves one, then its zero-shot snippet.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks (links inside code are not links)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(md: Path) -> set:
    seen, out = {}, set()
    for line in _prose(md.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(md: Path):
    for m in LINK.finditer(_prose(md.read_text())):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        yield target


@pytest.mark.parametrize("md", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(md):
    assert DOCS, "docs/*.md missing"
    broken = []
    for target in _links(md):
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
        elif ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target}: outside the repository")
    assert not broken, f"{md.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_length_and_sections():
    text = README.read_text()
    assert len(text.splitlines()) <= 350
    for heading in ("## Install", "## Quick start on a CPU", "## Choose a model", "## Train", "## Objectives",
                    "## Distillation", "## Export and deploy", "## Evaluate", "## What was measured",
                    "## Command line", "## Troubleshooting", "## Citation and license"):
        assert f"\n{heading}\n" in text, heading
    assert "make demo" in text and "make test" in text
    assert (ROOT / "LICENSE").is_file() and (ROOT / "CITATION.cff").is_file()


def _quick_start():
    """(the quick start's bash block, its zero-shot Python snippet) as the README has them."""
    text = README.read_text()
    section = text.split("\n## Quick start on a CPU\n", 1)[1].split("\n## ", 1)[0]
    blocks = {lang: body for lang, body in FENCE.findall(section)}
    return blocks["bash"], blocks["python"]


@pytest.mark.slow
def test_quick_start_export_and_zero_shot_snippet_run_as_typed(tmp_path):
    import open_clip
    import torch
    from PIL import Image

    bash, snippet = _quick_start()
    commands = [shlex.split(c) for c in bash.replace("\\\n", " ").splitlines() if c.strip()]
    train = next(c for c in commands if "open_clip_train.main" in c)
    export = next(c for c in commands if c[:2] == ["open-clip-lightclip", "export"])

    # the checkpoint the training command writes: LOGS/NAME/checkpoints/epoch_EPOCHS.pt (trainer format)
    logs, name, model_name = (train[train.index(f) + 1] for f in ("--logs", "--name", "--model"))
    epochs = int(train[train.index("--epochs") + 1])
    ckpt = tmp_path / logs / name / "checkpoints" / f"epoch_{epochs}.pt"
    assert export[2] == str(ckpt.relative_to(tmp_path)), "export reads the checkpoint training writes"
    ckpt.parent.mkdir(parents=True)
    model = open_clip.create_model(model_name)
    torch.save({"epoch": epochs, "name": name, "state_dict": model.state_dict(), "optimizer": {}}, ckpt)
    (ckpt.parent.parent / "params.txt").write_text(f"model: {model_name}\n")

    # an image where the snippet opens one
    image_path = re.search(r"Image\.open\('([^']+)'\)", snippet).group(1)
    (tmp_path / image_path).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (128, 128), (220, 30, 30)).save(tmp_path / image_path)

    cli = Path(sys.executable).with_name("open-clip-lightclip")
    out = subprocess.run([str(cli), *export[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr

    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    labels = re.search(r"labels = (\[.*\])", snippet).group(1)
    assert len(lines) == len(eval(labels)) and all("%" in line for line in lines), run.stdout
    assert abs(sum(float(line.split("%")[0]) for line in lines) - 100) < 0.5, run.stdout
