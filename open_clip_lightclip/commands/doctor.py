"""``open-clip-lightclip doctor``: what to run first on a new machine (the checks: :mod:`..benchmarks._doctor`)."""
import argparse

DESCRIPTION = """\
Check that every objective trains on this machine, at this precision: clip, lightclip (instance +
token + MLM), cliplite and a distilled student (clip + affinity + feature terms, from a small teacher
built here), each built as the trainer builds it and trained for a few steps on synthetic data
(captions of varying length, some empty, some longer than the context). Checks: every loss term
finite; each term of the first step within a relative tolerance of an fp32 reference at the same
weights and inputs (1e-5 at fp32; 2e-2 with fp16: amp, fp16; 5e-2 with bf16, whose 8 significant
bits to fp16's 11 move the towers' features more: amp_bf16, amp_bfloat16, bf16); a trainer-style
checkpoint loads back through open_clip.create_model(..., pretrained=PATH) with equal embeddings
(max abs diff <= 1e-6). Measures each objective's step time as a ratio to clip's and its peak
memory. Exit 0 when every check passes, 1 when one fails (each named), 2 for settings it cannot run."""

EPILOG = """\
precision as the trainer means it: amp = torch.autocast(DEVICE, dtype=torch.float16) with a GradScaler
(on the CPU too: fp16 autocast runs matmuls in fp16 there, which imitates CUDA's amp); amp_bf16 /
amp_bfloat16 = bf16 autocast; bf16 / fp16 = weights cast, no autocast.
examples:
  open-clip-lightclip doctor --fast --device cpu --precision fp32     (~20 s on 2 cores; amp: ~40 s)
  open-clip-lightclip doctor --device cuda --precision amp --json doctor.json"""


def run(args: argparse.Namespace) -> int:
    from ..benchmarks._doctor import run as run_doctor  # torch only when it runs, not for --help

    return run_doctor(args)


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check every objective trains here: finite terms, precision against fp32, "
                                      "checkpoint round trip, step time and memory",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--precision", default="amp",
                   help="fp32, amp, amp_bf16, amp_bfloat16, bf16 or fp16 (default: amp, the trainer's default)")
    p.add_argument("--model", default=None, help="model config (default: LightCLIP-MNv3; --fast: LightCLIP-Tiny)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size (default: the model's; --fast with LightCLIP-Tiny: 64)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 32; --fast: 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per objective: the first a warm-up, the last measures memory (default: 5; --fast: 2)")
    p.add_argument("--objectives", nargs="+", default=None, metavar="NAME",
                   help="only these (default: all: clip lightclip cliplite clip+distill; the step time ratio needs clip)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON (its folder must exist)")
    p.add_argument("--fast", action="store_true",
                   help="LightCLIP-Tiny at 64 px, batch 4, 2 steps: well under a minute on 2 CPU cores (the tests run it)")
    p.set_defaults(func=run)
