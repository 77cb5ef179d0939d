"""Shards derived from other shards, one output shard per input shard (``cache-teacher``, ``reinforce``):
resumable and never overwriting.

An output folder holds the derived shards, a description (``info_name``: what made them, the source shards
and the finished output shards with their sample counts) and ``sizes.json`` (the trainer's sample counts).
A shard is written to a temporary name and renamed when complete; a rerun skips the finished ones; a folder
holding shards of another derivation (other sources or settings) or files this derivation did not write is
refused in one line.
"""
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .shards import add_tar_member

__all__ = ["DerivedShards", "write_shard", "source_shards", "count_samples", "read_description"]


class DerivedShards:
    """The output folder of one derivation. ``info`` is its description (``sources`` and ``shards`` are filled
    here); ``same`` names the keys of ``info`` that must match a description already in the folder."""

    def __init__(self, sources: Sequence[str], out: str, info_name: str, info: dict, same: Sequence[str],
                 error: type = ValueError, what: str = "derivation"):
        self.out_dir, self.info_path, self.error = Path(out), Path(out) / info_name, error
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names = [Path(s).name for s in sources]
        if len(set(self.names)) != len(self.names):
            raise error("two source shards share a file name; write them into separate --out folders")
        self.sources = list(sources)
        self.info = {**info, "sources": [str(Path(s).resolve()) for s in sources], "shards": {}}
        if self.info_path.is_file():
            old = json.loads(self.info_path.read_text())
            if any(old.get(k) != self.info.get(k) for k in (*same, "sources")):
                raise error(f"{self.out_dir} holds a {what} of other shards or settings; choose another --out "
                            "(nothing was overwritten)")
            self.info["shards"] = old.get("shards", {})
            self.info.update({k: v for k, v in old.items() if k not in self.info})
        strangers = [n for n in self.names if (self.out_dir / n).exists() and n not in self.info["shards"]]
        if not self.info_path.is_file() and (self.out_dir / "sizes.json").exists():
            strangers.append("sizes.json")
        if strangers:
            raise error(f"{self.out_dir / strangers[0]} exists and is not a finished shard of this {what}; "
                        "choose another --out (nothing was overwritten)")

    @property
    def finished(self) -> Dict[str, int]:
        return self.info["shards"]

    def pending(self) -> List[Tuple[str, str]]:
        """``(source, name)`` of the shards still to write."""
        return [(s, n) for s, n in zip(self.sources, self.names) if n not in self.info["shards"]]

    def temporary(self, name: str) -> Path:
        return self.out_dir / f".{name}.tmp-{os.getpid()}"

    def finish(self, name: str, tmp: Path, count: int, **extra) -> None:
        """Rename a complete temporary shard into place and record it (``extra``: values kept per shard)."""
        os.replace(tmp, self.out_dir / name)
        self.info["shards"][name] = count
        for key, value in extra.items():
            self.info.setdefault(key, {})[name] = value
        self.save()

    def save(self) -> None:
        self.info_path.write_text(json.dumps(self.info, indent=1))
        (self.out_dir / "sizes.json").write_text(json.dumps(self.info["shards"], indent=1))


def write_shard(path: Path, samples: Iterable[Tuple[str, Dict[str, bytes]]]) -> int:
    """A tar of ``(key, {ext: bytes})`` samples; returns the number written."""
    now, n = time.time(), 0
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                add_tar_member(tar, f"{key}.{ext}", data, now)
            n += 1
    return n


def source_shards(pattern: str) -> List[str]:
    """The shards of a brace pattern (``'::'`` between several); ``FileNotFoundError`` (one line) naming the first
    missing one."""
    import braceexpand

    sources = [s for part in pattern.split("::") for s in braceexpand.braceexpand(part)]
    missing = [s for s in sources if not os.path.isfile(s)]
    if missing:
        raise FileNotFoundError(f"no such shard {missing[0]} ({len(missing)} of {len(sources)} missing)")
    return sources


def count_samples(sources: Sequence[str]) -> int:
    """The samples (distinct keys) in the shards, read from their tar headers (for a progress bar's total)."""
    total = 0
    for src in sources:
        with tarfile.open(src) as tar:
            total += len({m.name.partition(".")[0] for m in tar if m.isfile()})
    return total


def read_description(train_data: Optional[str], info_name: str, same: Sequence[str], error: type, flag: str,
                     command: str) -> dict:
    """The description ``info_name`` beside the shards of a ``--train-data`` pattern (``'::'`` between several):
    every folder the pattern names must hold one, and they must agree on the keys ``same`` (what training reads
    from the shards); ``error`` in one line otherwise. Returns the first folder's."""
    import braceexpand

    if not train_data:
        raise error(f"{flag} needs --train-data: the shards `open-clip-lightclip {command}` wrote")
    folders = list(dict.fromkeys(Path(s).parent for part in train_data.split("::")
                                 for s in braceexpand.braceexpand(part)))
    found = []
    for folder in folders:
        path = folder / info_name
        if not path.is_file():
            raise error(f"{flag}: no {path}; make the shards with `open-clip-lightclip {command}`")
        found.append((path, json.loads(path.read_text())))
    (first_path, first), rest = found[0], found[1:]
    for path, info in rest:
        differ = next((k for k in same if info.get(k) != first.get(k)), None)
        if differ is not None:
            raise error(f"{flag}: {path} and {first_path} were made with different {differ!r} "
                        f"({info.get(differ)!r} vs {first.get(differ)!r}); train from one `{command}` setting, or "
                        f"remake one folder with the other's")
    return first
