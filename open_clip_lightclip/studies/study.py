"""A study: arms x seeds through the real trainer on one data set, model and budget, evaluated and compared.

Runs are paired by seed: the trainer's ``--seed`` fixes the towers' initial weights and the data
order, so two arms of one seed differ only in their flags. Resumable: a finished, evaluated run with the
same trainer settings (every flag and default the trainer resolves, the run's name aside) is reused,
whatever arm it was recorded under; an interrupted run's folder is moved aside. Writes ``results.md``,
``results.json`` and the forest plot ``results.png`` to the output folder after every run.
"""
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..upstream.trainer_cmd import trainer_command, trainer_settings
from . import report
from .arms import Arm, StudyError, check_arms, check_cached_shards, idle_flags
from .evaluate import evaluate_checkpoint, load_eval_data
from .runs import cpu_seconds, finished_run, log, move_aside, read_curves, same_settings, train

__all__ = ["StudyConfig", "run_study", "rereport", "prepare_clipart_shards", "APT_LINE"]

APT_LINE = "apt-get install -y openclipart-png openclipart-svg dataset-fashion-mnist"


@dataclass
class StudyConfig:
    out: str = "ablate_out"
    report_dir: Optional[str] = None  # results.md/.json/.png; None: out
    model: str = "LightCLIP-Tiny"
    image_size: Optional[int] = None  # None: the shards' size (128 when building the clip art)
    batch_size: int = 64
    steps_per_epoch: int = 80
    epochs: int = 5
    lr: float = 1e-3
    warmup: int = 40
    seeds: Sequence[int] = (0, 1, 2)
    data: Optional[str] = None  # shards made by build-shards (a folder with build_info.json)
    max_images: int = 0
    heldout_fraction: float = 0.1
    fashion_mnist_samples: int = 10000
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    threads: int = 0
    parallel: int = 1  # runs trained at once
    build_workers: int = 2
    log_every: int = 5
    trainer_args: str = ""
    no_apt: bool = False
    tag: str = "study"
    command_line: str = ""
    default_image_size: int = 128
    primary: str = report.DEFAULT_PRIMARY  # the metric the verdicts are on, declared before the runs
    extra_notes: List[str] = field(default_factory=list)

    @property
    def reports(self) -> Path:
        return Path(self.report_dir or self.out)

    def common_flags(self, info: dict, image_size: Optional[int] = None) -> List[str]:
        """Flags every arm's run gets (the arm's own flags come last)."""
        return ["--force-image-size", str(image_size or self.image_size), "--dataset-resampled",
                "--train-num-samples", str(self.steps_per_epoch * self.batch_size),
                "--val-data", info["heldout_data"], "--val-frequency", "1", "--save-frequency", "0",
                "--log-every-n-steps", str(self.log_every), *shlex.split(self.trainer_args)]


# ---------------------------------------------------------------- data


def ensure_debian_data(need_clipart: bool, fashion_dir: Optional[Path], allow_apt: bool, tag: str) -> List[str]:
    """Install the Debian data packages when root (apt-get); the ones still missing."""
    from ..data.sources import OPENCLIPART_ROOT

    def missing():
        out = []
        if need_clipart and not (OPENCLIPART_ROOT / "png").is_dir():
            out.append("openclipart-png")
        if need_clipart and not (OPENCLIPART_ROOT / "svg").is_dir():
            out.append("openclipart-svg")
        if fashion_dir is not None and not (fashion_dir / "t10k-images-idx3-ubyte.gz").is_file():
            out.append("dataset-fashion-mnist")
        return out

    todo = missing()
    if todo and allow_apt and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing Debian packages: {' '.join(todo)}", tag)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *todo]
        if subprocess.call(cmd, env=env) != 0:
            subprocess.call(["apt-get", "update"], env=env)
            subprocess.call(cmd, env=env)
        todo = missing()
    return todo


def prepare_clipart_shards(cfg: StudyConfig, data: Path) -> dict:
    """Build (or reuse) the clip-art shards in ``data``; their build info."""
    from ..data import shards, sources

    info_path = data / "build_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("image_size") != cfg.image_size or info.get("heldout_fraction") != cfg.heldout_fraction \
                or info.get("max_images", 0) != cfg.max_images:
            raise StudyError(f"{data} holds shards built with other settings (image size {info.get('image_size')}, "
                             f"held-out fraction {info.get('heldout_fraction')}, max images {info.get('max_images', 0)}); "
                             "choose another --out, or pass --image-size to match")
        log(f"reusing shards in {data} ({info['written']['train']} train / {info['written']['heldout']} held out)",
            cfg.tag)
        return info
    if any(data.glob("*.tar")):
        raise StudyError(f"{data} holds shards but no build_info.json (an interrupted build?); move it away")
    log(f"building shards from the clip art into {data} ({cfg.image_size} px)", cfg.tag)
    stats = sources.BuildStats()
    records = list(sources.openclipart_records(stats=stats))
    if cfg.max_images:
        records = records[:cfg.max_images]
    info = shards.build_shards(records, data, image_size=cfg.image_size, heldout_fraction=cfg.heldout_fraction,
                               split_seed=0, samples_per_shard=1000, stats=stats, source="openclipart",
                               workers=cfg.build_workers, progress=True)
    info["max_images"] = cfg.max_images
    info_path.write_text(json.dumps(info, indent=1))
    log(f"shards: {info['written']['train']} train / {info['written']['heldout']} held out; skipped "
        f"{info['skipped_broken']} broken image(s), {info['skipped_no_caption']} without caption", cfg.tag)
    return info


def _data(cfg: StudyConfig) -> dict:
    fashion_dir = Path(cfg.fashion_mnist_dir) if cfg.fashion_mnist_samples > 0 else None
    if cfg.data is not None:
        info_path = Path(cfg.data) / "build_info.json"
        if not info_path.is_file():
            raise StudyError(f"{info_path} not found; make the shards with `open-clip-lightclip build-shards`")
        info = json.loads(info_path.read_text())
        cfg.image_size = cfg.image_size or info["image_size"]
    else:
        cfg.image_size = cfg.image_size or cfg.default_image_size
    missing = ensure_debian_data(cfg.data is None, fashion_dir, not cfg.no_apt, cfg.tag) \
        if (cfg.data is None or fashion_dir is not None) else []
    if cfg.data is None and any(p.startswith("openclipart") for p in missing):
        raise StudyError(f"the study needs the Debian packages {', '.join(missing)}: install them with "
                         f"`sudo {APT_LINE}`, or point --data at shards made by `open-clip-lightclip build-shards`")
    if "dataset-fashion-mnist" in missing:
        log("Fashion-MNIST not available: skipping that check", cfg.tag)
        cfg.fashion_mnist_samples = 0
    if cfg.data is None:
        info = prepare_clipart_shards(cfg, Path(cfg.out) / "data")
    if not info.get("train_data") or not info.get("heldout_data"):
        raise StudyError("the shards need both a train and a held-out split (build-shards --heldout-fraction > 0)")
    return info


# ---------------------------------------------------------------- runs


def _threads_line(runs: List[dict]) -> List[str]:
    """How many of the evaluated ``runs`` trained with each thread count (it decides the rounding of their sums)."""
    counts = Counter(r.get("threads") for r in runs if "eval" in r)
    if not counts:
        return []
    parts = [f"{t if t else 'not recorded'} ({n} run{'s' * (n > 1)})"
             for t, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    return [f"Threads per run: {', '.join(parts)}. The same command and thread count train the same weights bit for "
            "bit; another thread count rounds in another order and trains another draw of the run."]


def _primary_line(primary: str) -> str:
    return (f"Primary metric, declared before the runs: {report.describe_primary(primary)}; the retrieval mean and "
            "the zero-shot mean beside it. The seeds won and the verdicts are on the primary.")


def _header(cfg: StudyConfig, info: dict, arms: Dict[str, Arm], baseline: str, wall: float, runs: List[dict]) -> List[str]:
    lines = [
        f"# open-clip-lightclip {cfg.tag} results", "",
        f"Model `{cfg.model}` at {cfg.image_size} px, trained from scratch through `open_clip_train.main`; every arm: "
        f"{cfg.epochs} epochs x {cfg.steps_per_epoch} steps, batch {cfg.batch_size}, lr {cfg.lr}, warmup {cfg.warmup}; "
        f"seeds {', '.join(map(str, cfg.seeds))} (paired: one seed = the same initial towers and data order in every arm).",
        f"Data: {info['written']['train']} train / {info['written']['heldout']} held-out captioned images "
        f"({info.get('source') or 'shards'}). Metrics: clip_benchmark's zero-shot retrieval (recall@k) and "
        "classification (top-1) on the held-out split.",
        _primary_line(cfg.primary),
        "", "Arms (trainer flags after the common ones):", "",
    ]
    lines += [f"- `{a.name}`{' (baseline)' if a.name == baseline else ''}: `{a.command_text or '(none)'}`"
              for a in arms.values()]
    cpu = cpu_seconds(False) + cpu_seconds(True)
    lines += ["", f"Wall time of this invocation: {wall / 60:.1f} min"
              + (" (finished runs were reused)" if any(r.get("reused") for r in runs) else "")
              + f"; CPU time (all processes): {cpu / 60:.1f} min; machine: {platform.machine()}, "
              f"{os.cpu_count()} cores; date: {time.strftime('%Y-%m-%d')}.", *_threads_line(runs), *cfg.extra_notes, "",
              f"Command: `{cfg.command_line}`"]
    return lines


def _write_results(cfg: StudyConfig, info: dict, arms: Dict[str, Arm], baseline: str, runs: List[dict],
                   data: Optional[dict], start: float) -> str:
    out = cfg.reports
    out.mkdir(parents=True, exist_ok=True)
    names = list(arms)
    summary = report.summarize_runs(runs, names, baseline, cfg.primary)
    chance = report.chance_levels(data) if data else {}
    text = report.markdown(summary, names, chance,
                           _header(cfg, info, arms, baseline, time.time() - start, runs))
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(
        {"config": asdict(cfg), "baseline": baseline, "primary": cfg.primary,
         "arms": {a.name: list(a.flags) for a in arms.values()}, "runs": runs, "summary": summary}, indent=1, default=str))
    if any("eval" in r for r in runs) and len(names) > 1:
        report.forest_plot(out / "results.png", summary, names, _plot_title(cfg))
    return text


def _plot_title(cfg: StudyConfig) -> str:
    return (f"{cfg.model}, {cfg.image_size} px, {cfg.epochs}x{cfg.steps_per_epoch} steps of {cfg.batch_size}, "
            f"seeds {' '.join(map(str, cfg.seeds))}")


def recorded_runs(*paths: Path) -> List[dict]:
    """Evaluated runs of earlier ``results.json`` files, each with the trainer settings it ran with.

    A study copied to another machine without its run folders (or whose logs were cleaned) resumes
    from them: a run with the same settings on the same shards is not trained again. Records without
    settings (written before ``ablate`` kept them) are left out: their defaults are not known."""
    found: List[dict] = []
    for path in paths:
        if path.is_file():
            found += [{k: v for k, v in r.items() if k != "reused"}
                      for r in json.loads(path.read_text()).get("runs", []) if "eval" in r and r.get("settings")]
    return found


def find_recorded(recorded: List[dict], settings: dict, name: str) -> Optional[dict]:
    """The recorded run with these settings (the one of the same name first), else None."""
    matches = [r for r in recorded if same_settings(r["settings"], settings)]
    matches.sort(key=lambda r: f"{r.get('arm')}-seed{r.get('seed')}" != name)
    return matches[0] if matches else None


def same_trainings(plan_settings: Dict[str, dict]) -> List[List[str]]:
    """Groups of arms whose flags resolve to the same trainer settings (e.g. a flag set to its default)."""
    groups: Dict[str, List[str]] = {}
    for name, settings in plan_settings.items():
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _finish(record: dict, job: tuple, cfg: StudyConfig, data: dict) -> dict:
    """A run's record with its arm, seed, held-out metrics (evaluated once) and training curves; logged."""
    seed, arm, name, run_dir, ckpt = job[:5]
    record.update(arm=arm.name, seed=seed)
    if "eval" not in record:
        record["eval"] = evaluate_checkpoint(cfg.model, str(ckpt), cfg.image_size, data)
        (run_dir / "study_run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "reused"},
                                                           indent=1))
    e = record["eval"]
    log(f"{name}: i→t R@1/5/10 {e['i2t_R@1']:.3f}/{e['i2t_R@5']:.3f}/{e['i2t_R@10']:.3f}  t→i "
        f"{e['t2i_R@1']:.3f}/{e['t2i_R@5']:.3f}/{e['t2i_R@10']:.3f}  clip-art zero-shot "
        f"{e.get('clipart_zeroshot', float('nan')):.3f}  Fashion-MNIST {e.get('fashion_mnist_zeroshot', float('nan')):.3f}",
        cfg.tag)
    if "curves" not in record:
        record["curves"] = read_curves(Path(record.get("run_dir", run_dir)), cfg.steps_per_epoch, cfg.batch_size)
    return record


def _train_all(cfg: StudyConfig, jobs: list, groups: List[List[int]], plan_size: int, total_steps: int, start: float,
               data: dict, trained: Callable[[List[int], dict], None]) -> List[str]:
    """Train each group's first job, ``cfg.parallel`` at a time, evaluate it and hand it to ``trained`` (in this
    thread); the names of the runs that failed. After a failure no other run starts; those running finish. An
    error or an interrupt here stops the running trainers too."""
    threads = cfg.threads or (max(1, _cores() // cfg.parallel) if cfg.parallel > 1 else 0)
    fresh_seconds: List[float] = []
    eval_lock, live_lock = threading.Lock(), threading.Lock()  # evaluation runs in this process: one at a time
    live: set = set()  # trainer processes running
    stop = threading.Event()

    def run_one(number: int, indices: List[int]) -> Optional[dict]:
        seed, arm, name, run_dir, ckpt, cmd, settings = jobs[indices[0]]
        if stop.is_set():
            return {}
        done_so_far = list(fresh_seconds)
        eta = f", study eta {sum(done_so_far) / len(done_so_far) * (len(groups) - number + 1) / cfg.parallel / 60:.0f} " \
              "min" if done_so_far else ""
        log(f"run {indices[0] + 1}/{plan_size} {name} ({number}/{len(groups)} to train): elapsed "
            f"{(time.time() - start) / 60:.1f} min{eta}", cfg.tag)
        if run_dir.exists():
            log(f"{name}: moved the earlier run folder aside to {move_aside(run_dir)}", cfg.tag)
        log(f"  $ {shlex.join(cmd)}", cfg.tag)
        t0 = time.time()

        mine: list = []

        def started(proc) -> None:
            mine.append(proc)
            with live_lock:
                live.add(proc)

        try:
            record = train(cmd, settings, run_dir, ckpt, total_steps, cfg.steps_per_epoch, cfg.batch_size, threads,
                           report=lambda msg: log(msg, cfg.tag), on_start=started)
        except BaseException:
            stop.set()
            raise
        finally:
            with live_lock:
                live.difference_update(mine)  # (no poll() of the others: it could reap a child its thread waits on)
        if record is None:
            stop.set()
            return None
        fresh_seconds.append(time.time() - t0)
        with eval_lock:
            return _finish(record, jobs[indices[0]], cfg, data)

    failed: List[str] = []
    with ThreadPoolExecutor(max_workers=cfg.parallel) as pool:
        futures = {pool.submit(run_one, n, indices): indices for n, indices in enumerate(groups, 1)}
        try:
            for future in as_completed(futures):
                record = future.result()
                if record is None:
                    failed.append(jobs[futures[future][0]][2])
                elif record:  # not skipped after a failure
                    trained(futures[future], record)
        except BaseException:
            stop.set()  # runs not started yet return at once
            with live_lock:
                for proc in live:
                    proc.terminate()  # their folders are moved aside by the next run of the study
            raise
    return failed


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_study(cfg: StudyConfig, arms: Sequence[Arm], baseline: Optional[str], report_only: bool = False) -> int:
    """Check everything, then train, evaluate and report every (seed, arm); 0 on success. ``report_only``: train
    nothing, report the runs recorded with each arm's settings."""
    start = time.time()
    report.check_primary(cfg.primary)
    if cfg.parallel < 1:
        raise StudyError(f"--parallel {cfg.parallel}: give the number of runs to train at once, 1 or more")
    out = Path(cfg.out)
    common = ["--train-data", "TRAIN.tar", "--model", cfg.model, "--batch-size", str(cfg.batch_size),
              *cfg.common_flags({"heldout_data": "HELDOUT.tar"}, cfg.image_size or cfg.default_image_size)]
    arm_map = check_arms(arms, baseline, cfg.seeds, common)  # before any data is built or run trained
    info = _data(cfg)
    for arm in arm_map.values():
        check_cached_shards(arm, info["train_data"])
    logs = out / "logs"
    total_steps = cfg.steps_per_epoch * cfg.epochs
    plan = [(seed, arm) for seed in cfg.seeds for arm in arm_map.values()]
    data = load_eval_data(info["heldout_data"], cfg.fashion_mnist_samples, cfg.fashion_mnist_dir)  # every report needs it
    recorded = recorded_runs(cfg.reports / "results.json", out / "results.json")

    def command(arm: Arm, seed: int) -> List[str]:
        return trainer_command(info["train_data"], str(logs), f"{arm.name}-seed{seed}", model=cfg.model, loss=None,
                               batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr, warmup=cfg.warmup, seed=seed,
                               extra=[*cfg.common_flags(info), *arm.flags])

    first_seed = {a.name: trainer_settings(command(a, cfg.seeds[0])[3:]) for a in arm_map.values()}
    for a in arm_map.values():
        if idle := idle_flags(a, first_seed[a.name]):
            log(f"arm {a.name}: {' '.join(idle)} train(s) nothing here (a flag of a term whose weight is 0, of another "
                "--loss, or of distillation without a teacher)", cfg.tag)
    for names in same_trainings(first_seed):
        log(f"arms {', '.join(names)} train the same (their flags resolve to the same trainer settings; a flag "
            "at its default, or of a term whose weight is 0, changes nothing): each "
            "seed is trained once and reported under every name", cfg.tag)
    done: Dict[int, dict] = {}  # plan index -> evaluated record
    to_train: Dict[str, List[int]] = {}  # settings -> plan indices: the first trains, the others report it
    reused: Dict[str, dict] = {}  # settings -> a reused record (an arm of the same training reports it too)
    jobs = []
    for i, (seed, arm) in enumerate(plan):
        name = f"{arm.name}-seed{seed}"
        run_dir = logs / name
        ckpt = run_dir / "checkpoints" / f"epoch_{cfg.epochs}.pt"
        cmd = command(arm, seed)
        jobs.append((seed, arm, name, run_dir, ckpt, cmd, trainer_settings(cmd[3:])))
        settings, key = jobs[i][-1], json.dumps(jobs[i][-1], sort_keys=True)
        where = f"run {i + 1}/{len(plan)} {name}"
        record = finished_run(run_dir, settings, ckpt)
        if record is not None:
            log(f"{where}: reusing the finished run in {run_dir}", cfg.tag)
        elif (found := reused.get(key) or find_recorded(recorded, settings, name)) is not None:
            record = dict(found)
            source = f"{record.get('arm')}-seed{record.get('seed')}"
            log(f"{where}: reusing the evaluated run {source}" + (" (the same training)" if source != name else ""),
                cfg.tag)
        elif report_only:
            log(f"{where}: no recorded run with its settings: left out (--report-only)", cfg.tag)
            continue
        else:
            to_train.setdefault(key, []).append(i)
            continue
        done[i] = dict(_finish(record, jobs[i], cfg, data), reused=True)
        reused.setdefault(key, {k: v for k, v in done[i].items() if k != "reused"})

    def alias(i: int, record: dict) -> None:
        """Plan index ``i`` trains what ``record`` trained: reported under its own arm name."""
        seed, arm, name = jobs[i][:3]
        log(f"{name}: reusing the evaluated run {record['arm']}-seed{record['seed']} (the same training)", cfg.tag)
        done[i] = dict(record, reused=True, arm=arm.name, seed=seed)

    for key in [k for k in to_train if k in reused]:  # trained under another arm whose folder came later
        for i in to_train.pop(key):
            alias(i, reused[key])

    def runs() -> List[dict]:
        return [done[i] for i in sorted(done)]

    def trained(indices: List[int], record: dict) -> None:
        done[indices[0]] = record
        for i in indices[1:]:  # an arm whose flags resolve to this training
            alias(i, record)
        _write_results(cfg, info, arm_map, baseline, runs(), data, start)

    if done:
        _write_results(cfg, info, arm_map, baseline, runs(), data, start)
    failed = _train_all(cfg, jobs, list(to_train.values()), len(plan), total_steps, start, data, trained)
    if failed:
        print(f"error: training {', '.join(failed)} failed (the lines above say why); the runs that finished are "
              f"in {cfg.reports / 'results.md'}; run the same command again to retry", file=sys.stderr)
        return 1
    text = _write_results(cfg, info, arm_map, baseline, runs(), data, start)
    print()
    print(text)
    log(f"wrote {cfg.reports / 'results.md'}, {cfg.reports / 'results.json'}, {cfg.reports / 'results.png'} in "
        f"{(time.time() - start) / 60:.1f} min", cfg.tag)
    return 0


# ---------------------------------------------------------------- re-reporting recorded runs

REREPORTED = "Re-reported from the recorded metrics"


def _recorded_header(md: Path, cfg: StudyConfig, arms: Dict[str, list], baseline: str) -> List[str]:
    """The header of an earlier ``results.md`` (less the lines a re-report writes), else one built from the config."""
    if md.is_file():
        lines = md.read_text().splitlines()
        end = next((i for i, line in enumerate(lines) if line.startswith(("Columns: ", "Per arm, %"))), len(lines))
        lines = [_mark_baseline(line, baseline) for line in lines[:end]
                 if not line.startswith(("Primary metric", REREPORTED))]
        while lines and not lines[-1].strip():
            lines.pop()
        return lines
    return [f"# open-clip-lightclip {cfg.tag} results", "",
            f"Model `{cfg.model}` at {cfg.image_size} px; every arm: {cfg.epochs} epochs x {cfg.steps_per_epoch} steps, "
            f"batch {cfg.batch_size}, lr {cfg.lr}, warmup {cfg.warmup}; seeds {', '.join(map(str, cfg.seeds))} (paired).",
            "", "Arms (trainer flags after the common ones):", "",
            *[f"- `{name}`{' (baseline)' if name == baseline else ''}: `{shlex.join(map(str, flags)) or '(none)'}`"
              for name, flags in arms.items()],
            "", f"Command: `{cfg.command_line}`"]


def _mark_baseline(line: str, baseline: str) -> str:
    """An arm's line of a results.md header (``- `name` (baseline): `flags```), marked for ``baseline``."""
    m = re.match(r"- `([^`]+)`( \(baseline\))?:", line)
    if not m:
        return line
    return f"- `{m.group(1)}`{' (baseline)' if m.group(1) == baseline else ''}:{line[m.end():]}"


def rereport(results: Path, primary: str = report.DEFAULT_PRIMARY, report_dir: Optional[Path] = None,
             command_line: str = "", baseline: Optional[str] = None) -> str:
    """Report the evaluated runs of a study's ``results.json`` again under ``primary``, from their recorded metrics:
    no run folder, data or training needed. Writes ``results.md``, ``results.json`` (config, arms and runs as
    recorded) and ``results.png`` to ``report_dir`` (default: the file's folder); returns the text of results.md.
    ``baseline`` pairs every arm with another of its arms than the study's (then ``report_dir`` must be another
    folder: the study's own report stays)."""
    report.check_primary(primary)
    results = Path(results)
    if not results.is_file():
        raise StudyError(f"{results}: no such file (give a study's results.json)")
    try:
        recorded = json.loads(results.read_text())
    except json.JSONDecodeError as e:
        raise StudyError(f"{results}: not JSON ({e})") from e
    if not isinstance(recorded, dict) or not isinstance(recorded.get("runs"), list) \
            or not isinstance(recorded.get("arms"), dict) or recorded.get("baseline") not in recorded["arms"]:
        raise StudyError(f"{results}: not the results.json of `ablate` (it needs its arms, baseline and runs)")
    known = {f.name for f in fields(StudyConfig)}
    cfg = StudyConfig(**{k: v for k, v in recorded.get("config", {}).items() if k in known})
    cfg.primary = primary
    names, runs, study_baseline = list(recorded["arms"]), recorded["runs"], recorded["baseline"]
    baseline = baseline or study_baseline
    if baseline not in recorded["arms"]:
        raise StudyError(f"--baseline {baseline}: not an arm of {results} (its arms: {', '.join(names)})")
    out = Path(report_dir) if report_dir else results.parent
    if baseline != study_baseline and out.resolve() == results.parent.resolve():
        raise StudyError(f"--baseline {baseline} would replace the study's own report (paired against "
                         f"{study_baseline}) in {out}: give another --report-dir")
    out.mkdir(parents=True, exist_ok=True)
    summary = report.summarize_runs(runs, names, baseline, primary)
    # the metric the runs were first reported on (ablate reported on the retrieval mean before it had --primary)
    first = recorded.get("rereported", {}).get("first_primary") or recorded.get("primary", "retrieval_mean")
    evaluated = sum("eval" in r for r in runs)
    header = _recorded_header(out / "results.md" if (out / "results.md").is_file() else results.parent / "results.md",
                              cfg, recorded["arms"], baseline)
    note = (f"{REREPORTED} of the {evaluated} evaluated runs in `{results.name}` (nothing retrained) on "
            f"{time.strftime('%Y-%m-%d')}" + (f": `{command_line}`" if command_line else "") + ".")
    if baseline != study_baseline:
        note += f" Paired against `{baseline}`; the study's own baseline is `{study_baseline}`."
    if first != primary:
        note += (f" These runs were first reported with their verdicts on the {report.metric_title(first)}"
                 + (" (then called the mean of the six recalls)" if first == "retrieval_mean" else "")
                 + "; the primary metric above was chosen after they were trained.")
    primary_line = (f"Primary metric: {report.describe_primary(primary)}; the retrieval mean and the zero-shot mean "
                    "beside it. The seeds won and the verdicts are on the primary.")
    text = report.markdown(summary, names, report.chance_from_runs(runs), [*header, "", primary_line, note])
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(
        {**{k: v for k, v in recorded.items() if k not in ("primary", "summary", "rereported")}, "baseline": baseline,
         "primary": primary,
         "summary": summary, "rereported": {"date": time.strftime("%Y-%m-%d"), "command": command_line,
                                            "first_primary": first}}, indent=1, default=str))
    if evaluated and len(names) > 1:
        report.forest_plot(out / "results.png", summary, names, _plot_title(cfg))
    return text
