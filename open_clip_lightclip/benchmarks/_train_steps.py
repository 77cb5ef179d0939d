"""The measuring code of ``open-clip-lightclip bench train`` (see :mod:`.train`); imports torch."""
import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from . import sync_device
from ._progress import Progress, Report
from ._train_arms import ARMS, MODEL_SETTINGS

__all__ = ["build_from_flags", "build_arm", "bench_steps", "bench_global_batch", "measure_peak", "count_work", "run"]


def count_work(fn: Callable[[], None]) -> tuple:
    """(FLOPs, bytes) of one call of ``fn``: FLOPs by ``torch.utils.flop_counter`` (matrix products only:
    ``exp`` / ``logsumexp`` and other elementwise work count 0); bytes as the sum, over every ATen op the
    call dispatches (forward and backward), of the sizes of its tensor inputs and outputs (views count 0):
    the memory traffic of unfused eager execution, each op reading its inputs from memory and writing its
    outputs (a fused kernel that keeps intermediates in cache moves less)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    class _Bytes(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view or func is torch.ops.aten._unsafe_view.default:
                return out  # a view moves nothing
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor):
                    _Bytes.total += t.numel() * t.element_size()
            return out

    flops = FlopCounterMode(display=False)
    with flops, _Bytes():
        fn()
    return flops.get_total_flops(), _Bytes.total


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS (glibc ``malloc_trim``), then reset the peak RSS (``VmHWM``)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak memory growth (MiB) while ``fn`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    if not _reset_peak_rss():
        fn()
        return None
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def build_from_flags(flags: List[str], model_name: str, image_size: int, device: torch.device, seed: int = 0,
                     precision: str = "fp32", settings: Optional[dict] = None):
    """(model, loss, optimizer) for trainer ``flags``, built as the trainer builds them: its parser (defaults,
    the plugin's flags and checks), ``open_clip.create_model`` at ``precision`` (the plugin's configs and its
    model hooks: teachers of ``--distill-teacher`` built on ``device``), ``open_clip.create_loss``."""
    import open_clip
    from open_clip_train.params import parse_args

    args = parse_args(["--model", model_name, "--train-data", "unused", "--device", str(device),
                       "--precision", precision, *flags])
    args.rank, args.world_size, args.distributed, args.distill = 0, 1, False, False
    kwargs = {"init_logit_scale": float(torch.log(torch.tensor(10.0))), "init_logit_bias": -10.0} if args.siglip else {}
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, force_image_size=image_size, output_dict=True, device=device,
                                   precision=precision, **kwargs)
    for attr, value in (settings or {}).items():
        setattr(model, attr, value)
    loss = open_clip.create_loss(args)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model.train(), loss.to(device), optimizer


def build_arm(name: str, model_name: str, image_size: int, device: torch.device, extra: List[str] = (), seed: int = 0):
    """(model, loss, optimizer) for one arm, built as the trainer builds them (:func:`build_from_flags`)."""
    return build_from_flags([*ARMS[name], *extra], model_name, image_size, device, seed, settings=MODEL_SETTINGS.get(name))


def _batch(model_name: str, batch_size: int, image_size: int, device: torch.device, seed: int = 0):
    import open_clip

    from ..data.synthetic import synthetic_samples

    captions = [caption for _, _, caption in synthetic_samples(batch_size, image_size=8, seed=seed)]
    texts = open_clip.get_tokenizer(model_name)(captions).to(device)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    return images.to(device), texts


def _step(model, loss, optimizer, images, texts) -> None:
    optimizer.zero_grad(set_to_none=True)
    out = model(images, texts)
    losses = loss(**out, output_dict=True)
    sum(losses.values()).backward()
    optimizer.step()


def _seconds_left(last: Dict[str, float], pending: List[str]) -> Optional[float]:
    """Seconds the ``pending`` steps (arm names) take, each at its arm's last wall time (an arm not yet run: the
    mean of those that have); None before any step."""
    if not last:
        return None
    mean = sum(last.values()) / len(last)
    return sum(last.get(name, mean) for name in pending)


def bench_steps(arms: List[str], model_name: str, batch_size: int, image_size: int, device: torch.device,
                repeats: int, warmup: int, extra: List[str] = (), clock=time.perf_counter,
                progress: Optional[Report] = None) -> List[dict]:
    """Median step time, ratio to the first arm, samples/s and peak memory of each arm; with ``progress``, a line
    per arm and round as it finishes (its step time, the time so far and an ETA)."""
    built = {name: build_arm(name, model_name, image_size, device, extra) for name in arms}
    images, texts = _batch(model_name, batch_size, image_size, device)
    if progress is not None:
        progress(f"built {len(arms)} arm(s); {warmup} warm-up + {repeats} timed round(s) + 1 memory round to run", None)
    times: Dict[str, List[float]] = {name: [] for name in arms}
    last: Dict[str, float] = {}  # wall seconds of each arm's latest step: the ETA's estimate

    def report(label: str, index: int, name: str, pending: List[str]) -> None:
        if progress is not None:
            progress(f"{label}, arm {index + 1}/{len(arms)} {name}: {last[name]:.2f}s", _seconds_left(last, pending))

    rounds = warmup + repeats
    for round_index in range(rounds):
        label = (f"warm-up {round_index + 1}/{warmup}" if round_index < warmup
                 else f"round {round_index - warmup + 1}/{repeats}")
        for index, name in enumerate(arms):  # interleaved: A B C A B C ...
            model, loss, optimizer = built[name]
            wall = time.perf_counter()
            sync_device(device)
            start = clock()
            _step(model, loss, optimizer, images, texts)
            sync_device(device)
            if round_index >= warmup:
                times[name].append(clock() - start)
            last[name] = time.perf_counter() - wall
            report(label, index, name, [*arms[index + 1:], *arms * (rounds - round_index - 1), *arms])
    # memory in a round of its own: measuring it (freeing the heap first) must not slow the timed steps
    peaks = {}
    for index, name in enumerate(arms):
        wall = time.perf_counter()
        peaks[name] = measure_peak(lambda: _step(*built[name], images, texts), device)
        last[name] = time.perf_counter() - wall
        report("memory", index, name, arms[index + 1:])
    base = statistics.median(times[arms[0]])
    rows = []
    for name in arms:
        median = statistics.median(times[name])
        rows.append({"arm": name, "step_s": median, "ratio": median / base, "samples_per_s": batch_size / median,
                     "peak_mib": peaks[name],
                     "spread_s": (max(times[name]) - min(times[name])) / 2})
    return rows


class _SimulatedGather:
    """Stands in for the all-gather of a ``local_loss`` run on rank 0 of ``world`` ranks."""

    def __init__(self, world: int):
        self.world = world
        self.cache: Dict[tuple, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, constant: bool = False, local_rows: bool = False, grad=None) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.cache:
            shape = (x.shape[0] * (self.world - 1), *x.shape[1:])
            if x.dtype == torch.bool:
                filler = x.repeat(self.world - 1, *([1] * (x.dim() - 1)))
            else:
                filler = torch.nn.functional.normalize(torch.randn(shape, device=x.device, dtype=x.dtype), dim=-1)
            self.cache[key] = filler
        return torch.cat([x, self.cache[key]], dim=0)


def bench_global_batch(model_name: str, batch_size: int, image_size: int, device: torch.device,
                       global_batches: List[int], repeats: int, extra: List[str] = (),
                       clock=time.perf_counter, on_row: Optional[Callable[[dict], None]] = None,
                       clip_step_s: Optional[float] = None, progress: Optional[Report] = None) -> List[dict]:
    """LightCLIP loss (instance and token terms) forward + backward at simulated global batch sizes, with
    its FLOPs and bytes (:func:`count_work`, one extra untimed call) and, given the time of a ``clip`` step
    at the local batch, the step ratio ``(clip step + the term's time) / clip step``. With ``progress``, a line
    per row (ETA: each term's cost grows linearly with the global batch, as a ``local_loss`` row's does)."""
    model, loss, _ = build_arm("lightclip all", model_name, image_size, device, extra)
    images, texts = _batch(model_name, batch_size, image_size, device)
    with torch.no_grad():
        out = model(images, texts)
    rows = []
    per_sample: Dict[str, float] = {}  # wall seconds of a term's latest row per global sample: the ETA's estimate
    for index, global_batch in enumerate(global_batches):
        world = max(1, global_batch // batch_size)
        loss.local_loss = True
        loss._gather = _SimulatedGather(world)
        for term in ("instance", "token"):
            loss.instance_weight, loss.token_weight, loss.mlm_weight = float(term == "instance"), float(term == "token"), 0.0
            leaves = {k: (v.detach().clone().requires_grad_(v.is_floating_point() and v.dim() > 0)
                          if torch.is_tensor(v) else v) for k, v in out.items()}

            def run_once():
                value = loss(**leaves, output_dict=True)
                sum(value.values()).backward()

            wall = time.perf_counter()
            if not rows:
                run_once()  # warm-up
            timings, peaks = [], []
            for _ in range(repeats):  # memory measured on the timed calls: at 16k one call takes minutes
                sync_device(device)
                start = clock()
                peaks.append(measure_peak(run_once, device))
                sync_device(device)
                timings.append(clock() - start)
            flops, moved = count_work(run_once)
            median = statistics.median(timings)
            rows.append({"global_batch": world * batch_size, "term": term, "loss_s": median,
                         "peak_mib": None if None in peaks else max(peaks), "gflop": flops / 1e9, "gbytes": moved / 1e9,
                         "step_ratio": None if clip_step_s is None else (clip_step_s + median) / clip_step_s})
            per_sample[term] = (time.perf_counter() - wall) / (world * batch_size)
            if on_row is not None:
                on_row(rows[-1])
            if progress is not None:
                pending = [(t, max(1, b // batch_size) * batch_size) for b in global_batches[index + 1:]
                           for t in ("instance", "token")] + ([("token", world * batch_size)] if term == "instance" else [])
                left = sum(per_sample.get(t, per_sample["instance"]) * n for t, n in pending)
                progress(f"global batch {world * batch_size} ({index + 1}/{len(global_batches)}), {term} term: "
                         f"{median:.2f}s", left)
    return rows


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def steps_table(rows: List[dict]) -> str:
    lines = ["| arm | step (s, median) | ratio to clip | samples/s | peak memory (MiB) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['step_s']:.3f} ± {r['spread_s']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['samples_per_s']:.1f} | {_fmt(r['peak_mib'], '.0f')} |")
    return "\n".join(lines)


def global_table(rows: List[dict]) -> str:
    lines = ["| simulated global batch | term | loss fwd+bwd (s) | peak memory (MiB) | GFLOP | GB moved | "
             "step ratio to clip |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "n/a" if r.get("step_ratio") is None else f"{r['step_ratio']:.2f}x"
        lines.append(f"| {r['global_batch']} | {r['term']} | {r['loss_s']:.3f} | {_fmt(r['peak_mib'], '.0f')} | "
                     f"{r['gflop']:.3g} | {r['gbytes']:.3g} | {ratio} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        print(f"error: unknown arm(s) {unknown}; choose from {list(ARMS)}")
        return 2
    extra = list(args.trainer_args or [])
    if args.clock == "cpu" and device.type != "cpu":
        print("error: --clock cpu measures this process's CPU time; use it with --device cpu")
        return 2
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    progress = Progress("bench train")  # stderr: the table on stdout can be redirected on its own
    print(f"model {args.model}, batch {args.batch_size}, {args.image_size} px, device {device}, "
          f"torch threads {torch.get_num_threads()}, {args.clock} clock, "
          f"{args.repeats} timed rounds after {args.warmup} warm-up\n", flush=True)
    if not args.global_batch:
        print(steps_table(bench_steps(args.arms, args.model, args.batch_size, args.image_size, device,
                                      args.repeats, args.warmup, extra, clock, progress)))
    else:
        clip = bench_steps(["clip"], args.model, args.batch_size, args.image_size, device, args.repeats,
                           args.warmup, extra=[], clock=clock,
                           progress=lambda what, left: progress(f"clip base (the global batches follow), {what}", left)
                           )[0]["step_s"]
        print(f"clip step at local batch {args.batch_size}: {clip:.3f} s (the step ratio's base)\n", flush=True)
        header = global_table([]).splitlines()
        print("\n".join(header), flush=True)  # rows as they come: the largest batches take minutes
        bench_global_batch(args.model, args.batch_size, args.image_size, device, args.global_batch, args.repeats,
                           extra, clock, on_row=lambda row: print(global_table([row]).splitlines()[-1], flush=True),
                           clip_step_s=clip, progress=progress)
    return 0


