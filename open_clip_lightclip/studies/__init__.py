"""Studies: training runs through the real ``open_clip_train.main``, held-out evaluation, reports of several runs.

May import ``models/``, ``losses/``, ``data/``, ``export/`` and the seam (its trainer command
line); never ``benchmarks/`` or ``commands/``.
"""
