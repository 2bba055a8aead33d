"""framehub's benchmarks: ``python -m bench [NAME ...]`` runs ``bench/<NAME>.py`` and prints a table.

See ``bench/common.py`` for the protocol a benchmark module follows.
"""
