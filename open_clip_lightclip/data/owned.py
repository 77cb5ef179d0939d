"""Output folders that never lose a file the user wrote.

A command that writes a folder (``build-shards``, ``build-benchmark``) records every file it creates in a
marker file there (``.open-clip-lightclip-files.json``) before creating it. A later run refuses a folder that
holds any other file (the user's notes, a ``sizes.json`` or ``classnames.txt`` of their own, output of an
older version) unless ``force``; even then it never deletes or overwrites a file it did not write.
"""
import json
import re
from pathlib import Path
from typing import Callable, List, Set

__all__ = ["MARKER", "OutputFolder"]

MARKER = ".open-clip-lightclip-files.json"


class OutputFolder:
    """``path``, checked for ``command``: ``writes(relative_name)`` says whether the command may create that name."""

    def __init__(self, path, command: str, writes: Callable[[str], bool], force: bool = False):
        self.path, self.command, self.writes, self.force = Path(path), command, writes, force
        self.marker = self.path / MARKER
        self.own: Set[str] = set()
        if self.marker.is_file():
            try:
                self.own = set(json.loads(self.marker.read_text()).get("files", []))
            except (ValueError, AttributeError) as e:
                raise FileExistsError(f"{self.marker}: not the file list {command} writes ({e}); "
                                      "choose another output folder") from e

    def _files(self) -> List[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                      if (p.is_file() or p.is_symlink()) and p != self.marker)

    def foreign(self) -> List[str]:
        """Files in the folder this command did not write."""
        return [f for f in self._files() if f not in self.own]

    def check(self) -> None:
        """Raise a one-line ``FileExistsError`` for a folder holding files this command did not write (without
        ``force``), or one whose name the command would write over (even with ``force``)."""
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path}: exists and is not a folder; choose another output folder")
        foreign = self.foreign()
        clash = [f for f in foreign if self.writes(f)]
        if clash:
            raise FileExistsError(
                f"{self.path / clash[0]}: {self.command} did not write this file and would write over it; "
                f"choose another output folder or move it away ({len(foreign)} file(s) there are not {self.command}'s; "
                "--force never overwrites or deletes them)")
        if foreign and not self.force:
            raise FileExistsError(
                f"{self.path}: holds {len(foreign)} file(s) {self.command} did not write (e.g. {foreign[0]}); "
                f"choose an empty or new output folder, or pass --force to write beside them (never over them)")

    def own_files(self, pattern: str = ".*") -> List[Path]:
        """Files this command wrote here before whose relative name matches ``pattern``."""
        return [self.path / f for f in sorted(self.own) if re.fullmatch(pattern, f) and (self.path / f).exists()]

    def remove_own(self, pattern: str = ".*") -> None:
        """Delete files this command wrote here before (``--force``): only those, never another file."""
        for p in self.own_files(pattern):
            p.unlink()
            self.own.discard(p.relative_to(self.path).as_posix())
        self._save()

    def claim(self, path) -> Path:
        """Record ``path`` (inside the folder) as this command's before it is created; returns it."""
        path = Path(path)
        rel = path.relative_to(self.path).as_posix()
        if path.exists() and rel not in self.own:
            raise FileExistsError(f"{path}: {self.command} did not write this file; refusing to write over it")
        if rel not in self.own:
            self.own.add(rel)
            self._save()
        return path

    def _save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(json.dumps({"command": self.command, "files": sorted(self.own)}, indent=1))
        tmp.replace(self.marker)
