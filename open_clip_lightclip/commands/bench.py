"""``open-clip-lightclip bench NAME``: benchmarks, one module each in :mod:`open_clip_lightclip.benchmarks`."""
import importlib
import pkgutil

from .. import benchmarks


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (see `open-clip-lightclip bench --help`)",
                       description="Measure instead of asserting: each benchmark prints a markdown table.")
    bench_sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{benchmarks.__name__}.{info.name}")
            if hasattr(module, "register"):
                module.register(bench_sub)
