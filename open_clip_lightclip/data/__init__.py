"""Data: captioned-image sources, webdataset shard writing / building / reading, synthetic shapes, clip_benchmark sets,
the offline teacher-embedding cache.

Plain Python (+ PIL, NumPy); imports nothing of this package outside ``data/`` but ``models/`` (the teacher
cache runs the teachers and writes the packed format their forward hooks read).
"""
