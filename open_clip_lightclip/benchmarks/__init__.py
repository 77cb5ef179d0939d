"""Benchmarks behind ``open-clip-lightclip bench NAME``: one module each, exposing ``register(subparsers)``.

A new ``bench`` subcommand is a new module here; :mod:`open_clip_lightclip.commands.bench` finds it.
Keep module-level imports light (no torch): the command line imports every module to build ``--help``.
"""
