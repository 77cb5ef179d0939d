"""Data: captioned-image sources, webdataset shard writing / building / reading, synthetic shapes, clip_benchmark sets.

Plain Python (+ PIL, NumPy); imports nothing of this package outside ``data/``.
"""
