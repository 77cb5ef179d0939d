"""Commands: the ``open-clip-lightclip`` subcommands, thin command-line layers over the rooms.

One module each, exposing ``register(subparsers)``.

May import every other room; nothing imports ``commands/`` but :mod:`open_clip_lightclip.cli`.

A new subcommand is a new module here; :mod:`open_clip_lightclip.cli` finds it.
"""
