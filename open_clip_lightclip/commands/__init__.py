"""Subcommands of ``open-clip-lightclip``: one module each, exposing ``register(subparsers)``.

A new subcommand is a new module here; :mod:`open_clip_lightclip.cli` finds it.
"""
