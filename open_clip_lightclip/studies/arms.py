"""Arms of a study: ``NAME=TRAINER FLAGS`` on the command line or in a JSON / YAML file, checked before training.

A file holds ``{"baseline": NAME, "arms": {NAME: "FLAGS", ...}}`` (or a list of ``NAME=FLAGS``
strings under ``arms``). Every arm's flags are parsed by the real trainer's parser, so an
unknown or bad flag stops the study before any run with one line naming the arm.
"""
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["Arm", "StudyError", "parse_arm", "read_arms_file", "check_arms", "check_cached_shards", "idle_flags"]

# trainer flags that read derived shards named by an arm's own --train-data: (description file, command)
_DERIVED = {"--distill-cache": ("teacher_cache.json", "cache-teacher"),
            "--distill-reinforced": ("reinforce.json", "reinforce")}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# flags a study sets itself for every arm: an arm may not change them (the comparison would not be paired)
RESERVED = ("--train-data", "--val-data", "--logs", "--name", "--seed", "--model", "--batch-size", "--epochs",
            "--train-num-samples", "--dataset-type", "--resume")


class StudyError(ValueError):
    """A study that cannot run as given; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class Arm:
    name: str
    flags: Tuple[str, ...]

    @property
    def command_text(self) -> str:
        return shlex.join(self.flags)


def parse_arm(text: str) -> Arm:
    """``NAME=FLAGS`` -> :class:`Arm`."""
    name, sep, flags = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise StudyError(f"arm {text!r}: write it as NAME=TRAINER FLAGS, e.g. 'soft=--loss lightclip "
                         "--lightclip-token-weight 0'")
    return make_arm(name, flags)


def make_arm(name: str, flags) -> Arm:
    if not _NAME.match(name):
        raise StudyError(f"arm name {name!r}: use letters, digits and _ . + - (it names the run folder)")
    try:
        parts = tuple(shlex.split(flags) if isinstance(flags, str) else map(str, flags))
    except ValueError as e:
        raise StudyError(f"arm {name!r}: cannot split its flags ({e})") from e
    for flag in parts:
        if flag.split("=", 1)[0] == "--train-data" and any(f in parts for f in _DERIVED):
            continue  # the study's own shards with stored teacher rows / views (checked by check_cached_shards)
        if flag.split("=", 1)[0] in RESERVED:
            raise StudyError(f"arm {name!r}: {flag.split('=', 1)[0]} is set by the study for every arm "
                             "(use the ablate option of the same name instead)")
    return Arm(name, parts)


def read_arms_file(path) -> Tuple[List[Arm], Optional[str]]:
    """Arms and the baseline's name from a ``.json`` or ``.yaml`` / ``.yml`` file."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such arms file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError as e:
        raise StudyError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the file as JSON") from e
    except Exception as e:  # JSON / YAML syntax errors
        raise StudyError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
                         f"{str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or "arms" not in data:
        raise StudyError(f"{path}: expected {{\"baseline\": NAME, \"arms\": {{NAME: \"FLAGS\", ...}}}}")
    arms_data = data["arms"]
    if isinstance(arms_data, dict):
        arms = [make_arm(str(name), flags) for name, flags in arms_data.items()]
    elif isinstance(arms_data, list):
        arms = [parse_arm(str(item)) for item in arms_data]
    else:
        raise StudyError(f"{path}: 'arms' must be a mapping NAME: FLAGS or a list of 'NAME=FLAGS'")
    return arms, data.get("baseline")


def check_arms(arms: Sequence[Arm], baseline: Optional[str], seeds: Sequence[int], common: Sequence[str],
               parse_error=None) -> Dict[str, Arm]:
    """Stop with one line (:class:`StudyError`) on duplicate names, a missing baseline, no seeds, or flags the
    trainer rejects; ``common`` are the flags the study adds to every arm; ``parse_error(argv)`` is the
    trainer parser's one-line error or None (default: the real trainer's)."""
    if not arms:
        raise StudyError("no arms: give at least two, e.g. --arms clip='--loss clip' lightclip='--loss lightclip'")
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StudyError(f"duplicate arm name(s) {', '.join(dupes)}: every arm needs its own name")
    if baseline is None:
        raise StudyError(f"no baseline: name one of the arms with --baseline ({', '.join(names)})")
    if baseline not in names:
        raise StudyError(f"baseline {baseline!r} is not an arm ({', '.join(names)}): add it or pick one of them")
    if not seeds:
        raise StudyError("no seeds: give --seeds 0 1 2 (3 or more for a confidence interval)")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds {' '.join(map(str, seeds))} repeats a seed: each seed is one paired run")
    if parse_error is None:
        from ..upstream.trainer_cmd import trainer_parse_error as parse_error
    for arm in arms:
        error = parse_error([*common, *arm.flags])
        if error:
            raise StudyError(f"arm {arm.name!r} ({arm.command_text}): {error}")
    return {a.name: a for a in arms}


def idle_flags(arm: Arm, settings: dict) -> List[str]:
    """The plugin's flags (``--lightclip-*``, ``--cliplite-*``, ``--distill-*``) that ``arm`` sets but its resolved
    trainer ``settings`` leave out: flags of a term whose weight is 0, of another ``--loss``, or of distillation
    without a teacher. They train nothing, so an arm that differs from another only by them measures nothing (a
    sweep of a term left off)."""
    from ..losses import list_losses

    prefixes = tuple(f"--{name}-" for name in (*list_losses(), "distill"))
    flags = [f.split("=", 1)[0] for f in arm.flags if f.startswith(prefixes)]
    return [f for f in dict.fromkeys(flags) if f[2:].replace("-", "_") not in settings]


def check_cached_shards(arm: Arm, study_train_data: str) -> None:
    """An arm that trains on derived shards (``--distill-cache`` / ``--distill-reinforced`` with ``--train-data X``:
    ``cache-teacher`` / ``reinforce`` output) stays paired only if they are the study's own training shards with
    the embeddings or views added: their description must name them."""
    if "--train-data" not in arm.flags:
        return
    import braceexpand

    info_name, command = next(v for k, v in _DERIVED.items() if k in arm.flags)
    given = arm.flags[arm.flags.index("--train-data") + 1]
    first = next(iter(braceexpand.braceexpand(given)))
    info_path = Path(first).parent / info_name
    if not info_path.is_file():
        raise StudyError(f"arm {arm.name!r}: no {info_path}; make the shards with `open-clip-lightclip {command}` "
                         "from the study's training shards")
    sources = json.loads(info_path.read_text()).get("sources", [])
    study = [str(Path(s).resolve()) for s in braceexpand.braceexpand(study_train_data)]
    if sorted(sources) != sorted(study):
        raise StudyError(f"arm {arm.name!r}: {info_path.parent} derives from other shards than the study's "
                         f"({study_train_data}); the arms would not be paired")
