"""The checks of ``open-clip-lightclip doctor`` (see :mod:`open_clip_lightclip.commands.doctor`); imports torch.

Every objective is built as ``bench train`` builds its arms (:func:`._train_steps.build_from_flags`: the
trainer's parser and defaults, ``open_clip.create_model``, ``open_clip.create_loss``) and trained for a few
steps on one synthetic batch, under the trainer's autocast (``open_clip_train.precision.get_autocast``) and,
for ``amp``, its ``GradScaler``. Checks, each named in the report:

* ``finite``: every named loss term of every step is finite;
* ``fp32``: every term of the first step against an fp32 reference (no autocast, fp32 weights) at the same
  weights, inputs and random draws (MLM masks, CLIP-Lite negatives), as a relative difference
  ``|value - ref| / max(|ref|, 1e-6)`` within :data:`TOLERANCES`;
* ``round trip``: the trained model saved as the trainer saves it (``torch.save({"state_dict": ...})``),
  loaded into a fresh model by ``open_clip.create_model(..., pretrained=path)``: equal embeddings
  (max abs diff <= :data:`ROUND_TRIP_ATOL`, fp32, eval mode).

Measured, not checked: the median step time (the first step is a warm-up; the device synchronised before
each timer read) as a ratio to the ``clip`` step of the same run, and the peak memory of the last step
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: growth of the peak resident set, Linux ``VmHWM``, during the
step). With 3 steps or more the last step is not timed (freeing the heap before it slows it); with 2 it is.
"""
import copy
import json
import logging
import math
import statistics
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import sync_device
from ._train_arms import ARMS
from ._train_steps import build_from_flags, measure_peak

__all__ = ["PRECISIONS", "OBJECTIVES", "TOLERANCES", "ROUND_TRIP_ATOL", "TEACHER", "objectives", "synthetic_batch",
           "check_settings", "run_doctor", "doctor_table", "run"]

# the trainer's --precision choices (its pure_bf16 / pure_fp16 are not offered here)
PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16")
# relative difference of each term from its fp32 reference, at most. bf16 keeps 8 significant bits to fp16's 11:
# under bf16 autocast the towers' features alone move LightCLIP-Tiny's distillation KL by 1.9e-2 (the loss
# recomputed in fp32 from them), so bf16 gets 5e-2 (pure bf16 weights measured within 1e-2 too)
TOLERANCES = {"fp32": 1e-5, "amp": 2e-2, "amp_bf16": 5e-2, "amp_bfloat16": 5e-2, "bf16": 5e-2, "fp16": 2e-2}
ROUND_TRIP_ATOL = 1e-6
TEACHER = "LightCLIP-Tiny"  # the distilled student's teacher: built in-process from a seed, saved, loaded back
FAST = {"model": "LightCLIP-Tiny", "image_size": 64, "batch_size": 4, "steps": 2}
FULL = {"model": "LightCLIP-MNv3", "image_size": None, "batch_size": 32, "steps": 5}
OBJECTIVES = ("clip", "lightclip", "cliplite", "clip+distill")
DESCRIBED = {"lightclip": "instance + token + MLM", "clip+distill": f"affinity + feature, teacher {TEACHER} built here"}


def objectives(teacher_spec: str) -> Dict[str, List[str]]:
    """Objective name -> trainer flags: each ``--loss`` of the plugin with every term on, and a distilled student."""
    return {
        "clip": ARMS["clip"],
        "lightclip": ARMS["lightclip all"],  # instance + token + MLM
        "cliplite": ARMS["cliplite"],
        "clip+distill": ["--loss", "clip", "--distill-teacher", teacher_spec, "--distill-affinity-weight", "1",
                         "--distill-feature-weight", "1"],
    }


def synthetic_batch(model_name: str, batch_size: int, image_size: int, seed: int = 0):
    """Random images and tokenized captions of varying length: every 4th empty, every 4th longer than the context."""
    import open_clip

    from ..data.synthetic import synthetic_samples

    base = [caption for _, _, caption in synthetic_samples(batch_size, image_size=8, seed=seed)]
    captions = []
    for i, caption in enumerate(base):
        kind = i % 4
        captions.append("" if kind == 0 else " ".join([caption] * 40) if kind == 1 else
                        caption if kind == 2 else f"{caption} and {caption}")
    texts = open_clip.get_tokenizer(model_name)(captions)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    return images, texts


def check_settings(device: str, precision: str, model: str, batch_size: int, steps: int,
                   json_path: Optional[str], names: Sequence[str] = OBJECTIVES) -> str:
    """A one-line error for settings the doctor cannot run, else ''."""
    import open_clip

    if precision not in PRECISIONS:
        return f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        return f"unknown --objectives {' '.join(unknown)}; choose from {' '.join(OBJECTIVES)}"
    if json_path is not None and not Path(json_path).expanduser().resolve().parent.is_dir():
        return f"--json {json_path}: folder {Path(json_path).expanduser().resolve().parent} does not exist"
    if batch_size < 2:
        return f"--batch-size must be at least 2 (contrastive terms need a negative), got {batch_size}"
    if steps < 1:
        return f"--steps must be at least 1, got {steps}"
    if open_clip.get_model_config(model) is None:
        return f"unknown --model {model!r}; see `open-clip-lightclip list-models`"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        return f"--device {device!r}: {str(e).splitlines()[0]}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available here (torch {torch.__version__}); try --device cpu"
    try:
        torch.zeros(1, device=dev)
    except Exception as e:  # noqa: BLE001 - any backend's refusal, in one line
        return f"--device {device}: cannot allocate on it ({(str(e).strip().splitlines() or [type(e).__name__])[0]})"
    return ""


def _save_teacher(folder: Path, seed: int = 1) -> str:
    """A small teacher saved as a trainer checkpoint: the ``--distill-teacher`` spec (nothing downloaded)."""
    import open_clip

    torch.manual_seed(seed)
    path = folder / f"teacher-{TEACHER}.pt"
    torch.save({"epoch": 1, "state_dict": open_clip.create_model(TEACHER).state_dict()}, path)
    return f"{TEACHER}={path}"


def _terms(model, loss, images, texts, autocast) -> Dict[str, torch.Tensor]:
    with autocast():
        out = model(images, texts)
        return loss(**out, output_dict=True)


def _step(model, loss, optimizer, scaler, images, texts, autocast) -> Dict[str, torch.Tensor]:
    """One training step as the trainer takes it (accum-freq 1): forward and loss under autocast, (scaled)
    backward, optimizer step, logit scale clamped."""
    optimizer.zero_grad(set_to_none=True)
    terms = _terms(model, loss, images, texts, autocast)
    total = sum(terms.values())
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return {k: v.detach() for k, v in terms.items()}


def _peak_mib(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        sync_device(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync_device(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return measure_peak(fn, device)


def _round_trip(model, model_name: str, image_size: int, images, texts, path: Path) -> float:
    """Max abs difference of the embeddings of ``model`` and of a fresh model loaded from its trainer checkpoint."""
    import open_clip

    model = model.float().eval()  # pure fp16 / bf16 weights: fp32 values exactly, as the loader makes them
    torch.save({"epoch": 1, "name": "doctor", "state_dict": model.state_dict()}, path)
    device = images.device
    fresh = open_clip.create_model(model_name, pretrained=str(path), force_image_size=image_size, device=device).eval()
    with torch.no_grad():
        diffs = [(a(x, normalize=True).float() - b(x, normalize=True).float()).abs().max().item()
                 for a, b, x in ((model.encode_image, fresh.encode_image, images),
                                 (model.encode_text, fresh.encode_text, texts))]
    path.unlink()
    return max(diffs)


def _config_image_size(model_name: str) -> int:
    import open_clip

    size = open_clip.get_model_config(model_name)["vision_cfg"].get("image_size", 224)
    return size if isinstance(size, int) else size[0]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def run_doctor(device: str = "cpu", precision: str = "amp", model_name: str = "LightCLIP-Tiny", batch_size: int = 4,
               image_size: Optional[int] = None, steps: int = 2, seed: int = 0,
               names: Sequence[str] = OBJECTIVES) -> dict:
    """Run every check (module docstring); the report as a JSON-ready dict (``ok``, ``failures``, ``objectives``)."""
    import open_clip

    dev = torch.device(device)
    image_size = image_size or _config_image_size(model_name)
    images, texts = synthetic_batch(model_name, batch_size, image_size, seed)
    images, texts = images.to(dev), texts.to(dev)
    report = {"device": str(dev), "precision": precision, "model": model_name, "image_size": image_size,
              "batch_size": batch_size, "steps": steps, "tolerance": TOLERANCES[precision], "round_trip_atol": ROUND_TRIP_ATOL,
              "torch": torch.__version__, "open_clip": open_clip.__version__, "objectives": {}, "failures": []}
    quiet = _NoRandomInitWarning()  # every model here starts random on purpose
    logging.getLogger().addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="lightclip-doctor-") as tmp:
            _run_checks(report, Path(tmp), dev, precision, model_name, image_size, steps, seed, images, texts, names)
    finally:
        logging.getLogger().removeFilter(quiet)
    report["checks"] = sum(len(e["terms"]) * 2 + 1 for e in report["objectives"].values())
    report["ok"] = not report["failures"]
    return report


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


def _run_checks(report: dict, folder: Path, dev: torch.device, precision: str, model_name: str, image_size: int,
                steps: int, seed: int, images: torch.Tensor, texts: torch.Tensor, names: Sequence[str]) -> None:
    import open_clip
    from open_clip_train.precision import get_autocast

    autocast = get_autocast(precision, device_type=dev.type)
    input_dtype = open_clip.get_input_dtype(precision)
    pure = precision in ("bf16", "fp16")
    tol = report["tolerance"]
    step_images = images if input_dtype is None else images.to(input_dtype)
    failures: List[str] = report["failures"]

    def fail(name: str, message: str) -> None:
        failures.append(f"{name}: {message}")
        report["objectives"][name]["ok"] = False

    built = {}
    teacher = _save_teacher(folder) if "clip+distill" in names else "unused"
    for name, flags in objectives(teacher).items():
        if name not in names:
            continue
        entry = report["objectives"][name] = {"flags": flags, "terms": {}, "step_s": None, "step_ratio": None,
                                              "peak_mib": None, "round_trip_max_abs_diff": None, "ok": True}
        try:
            model, loss, optimizer = build_from_flags(flags, model_name, image_size, dev, seed, precision)
            # the reference's own loss module: a loss that counts its calls (CLIP-Lite's negatives) must
            # draw the same negatives in the first step as in the reference
            ref_model, ref_loss = (model, copy.deepcopy(loss)) if not pure else \
                build_from_flags(flags, model_name, image_size, dev, seed, "fp32")[:2]
            torch.manual_seed(seed)  # the first step's random draws (MLM masks, CLIP-Lite negatives)
            with torch.no_grad():
                ref = {k: v.item() for k, v in _terms(ref_model, ref_loss, images, texts, suppress).items()}
            del ref_model, ref_loss
        except Exception as e:  # noqa: BLE001 - a doctor reports what breaks and goes on
            fail(name, f"build / fp32 reference raised {_one_line(e)} [check: build]")
            continue
        entry["terms"] = {k: {"value": None, "fp32_ref": v, "rel_diff": None, "finite": True, "ok": True}
                          for k, v in ref.items()}
        scaler = torch.amp.GradScaler(device=dev.type) if precision == "amp" else None
        built[name] = (model, loss, optimizer, scaler)

    times: Dict[str, List[float]] = {name: [] for name in built}

    def take_step(name: str, round_index: int) -> None:
        entry = report["objectives"][name]
        torch.manual_seed(seed + round_index)
        try:
            terms = {k: v.float().item() for k, v in _step(*built[name], step_images, texts, autocast).items()}
        except Exception as e:  # noqa: BLE001
            fail(name, f"step {round_index + 1} raised {_one_line(e)} [check: step]")
            del built[name]
            return
        for term, value in terms.items():
            row = entry["terms"].setdefault(term, {"value": None, "fp32_ref": None, "rel_diff": None,
                                                   "finite": True, "ok": True})
            if round_index == 0:
                row["value"] = value
            if not math.isfinite(value) and row["finite"]:
                row["finite"] = row["ok"] = False
                fail(name, f"{term} is not finite ({value}) at step {round_index + 1} [check: finite]")

    def timed_step(name: str, round_index: int) -> None:
        sync_device(dev)
        start = time.perf_counter()
        take_step(name, round_index)
        sync_device(dev)
        if name in built and (round_index > 0 or steps == 1):  # the first step is the warm-up
            times[name].append(time.perf_counter() - start)

    for round_index in range(steps):  # interleaved: A B C D A B C D ...
        last = round_index == steps - 1
        for name in list(built):
            if last and steps >= 3:  # memory in a step of its own: freeing the heap first slows that step
                report["objectives"][name]["peak_mib"] = _peak_mib(lambda: take_step(name, round_index), dev)
            elif last:  # one or two steps: the timed step is the measured one too
                report["objectives"][name]["peak_mib"] = _peak_mib(lambda: timed_step(name, round_index), dev)
            else:
                timed_step(name, round_index)

    for name, entry in report["objectives"].items():
        for term, row in entry["terms"].items():
            value, ref = row["value"], row["fp32_ref"]
            if value is None and not entry["ok"]:
                continue  # its step raised, reported as such
            if value is None or ref is None:
                row["ok"] = False
                fail(name, f"{term} is missing {'at ' + precision if value is None else 'from the fp32 reference'}"
                           " [check: fp32]")
                continue
            row["rel_diff"] = abs(value - ref) / max(abs(ref), 1e-6)
            if not row["rel_diff"] <= tol:
                row["ok"] = False
                fail(name, f"{term} = {value:.6g} at {precision}, {ref:.6g} at fp32: relative difference "
                           f"{row['rel_diff']:.2e} > tolerance {tol:.0e} [check: fp32]")
        if times.get(name):
            entry["step_s"] = statistics.median(times[name])
        if name in built:
            try:
                diff = _round_trip(built[name][0], model_name, image_size, images, texts, folder / "checkpoint.pt")
            except Exception as e:  # noqa: BLE001
                fail(name, f"checkpoint round trip raised {_one_line(e)} [check: round trip]")
                continue
            entry["round_trip_max_abs_diff"] = diff
            if not diff <= ROUND_TRIP_ATOL:
                fail(name, f"checkpoint round trip: embeddings differ by {diff:.2e} > {ROUND_TRIP_ATOL:.0e} "
                           "[check: round trip]")
    base = report["objectives"].get("clip", {}).get("step_s")
    for entry in report["objectives"].values():
        if base and entry["step_s"]:
            entry["step_ratio"] = entry["step_s"] / base


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def doctor_table(report: dict) -> str:
    """One markdown table: a row per objective and term, and one per objective for the checkpoint round trip."""
    mem = "peak memory (MiB)" if report["device"].startswith("cuda") else "peak RSS growth (MiB)"
    lines = [f"| objective | term | value | fp32 ref | rel diff | ok | step time ratio to clip | {mem} |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in report["objectives"].items():
        ratio, peak = (f"{e['step_ratio']:.2f}x" if e["step_ratio"] else "n/a"), _fmt(e["peak_mib"], ".0f")
        for term, r in e["terms"].items():
            lines.append(f"| {name} | {term} | {_fmt(r['value'], '.6g')} | {_fmt(r['fp32_ref'], '.6g')} | "
                         f"{_fmt(r['rel_diff'], '.1e')} | {'ok' if r['ok'] else 'FAIL'} | {ratio} | {peak} |")
        diff = e["round_trip_max_abs_diff"]
        lines.append(f"| {name} | checkpoint round trip (max abs diff) | {_fmt(diff, '.1e')} | | | "
                     f"{'ok' if diff is not None and diff <= report['round_trip_atol'] else 'FAIL'} | {ratio} | {peak} |")
        if not e["terms"]:
            lines[-1] = lines[-1].replace("| ok |", "| FAIL |")
    return "\n".join(lines)


def run(args) -> int:
    """``open-clip-lightclip doctor``: 0 when every check passes, 1 when one fails, 2 for settings it cannot run."""
    import sys

    preset = FAST if args.fast else FULL
    model = args.model or preset["model"]
    batch_size = args.batch_size or preset["batch_size"]
    steps = args.steps or preset["steps"]
    image_size = args.image_size or (preset["image_size"] if model == preset["model"] else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = args.objectives or OBJECTIVES
    error = check_settings(device, args.precision, model, batch_size, steps, args.json, names)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    how = {"fp32": "no autocast", "bf16": "bf16 weights, no autocast", "fp16": "fp16 weights, no autocast"}.get(
        args.precision, f"torch.autocast({torch.device(device).type!r}, dtype="
                        f"{'torch.float16' if args.precision == 'amp' else 'torch.bfloat16'})")
    if args.precision == "amp" and torch.device(device).type == "cpu":
        how += ", CUDA's fp16 autocast imitated on the CPU"
    print(f"doctor: device {device}, precision {args.precision} ({how}), model {model} at "
          f"{image_size or _config_image_size(model)} px, batch {batch_size}, {steps} steps per objective (1 warm-up), "
          f"torch {torch.__version__} ({torch.get_num_threads()} CPU threads); objectives: "
          f"{', '.join(f'{n} ({DESCRIBED[n]})' if n in DESCRIBED else n for n in names)}", flush=True)
    report = run_doctor(device, args.precision, model, batch_size, image_size, steps, names=names)
    print(doctor_table(report))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(report, indent=2) + "\n")
    for failure in report["failures"]:
        print(f"FAIL {failure}")
    checks = report["checks"]
    print(f"doctor: {len(report['failures'])} check(s) failed" if report["failures"] else
          f"doctor: all {checks} checks passed (terms finite, within {report['tolerance']:.0e} of fp32; "
          f"checkpoint round trips within {ROUND_TRIP_ATOL:.0e})")
    return 1 if report["failures"] else 0
