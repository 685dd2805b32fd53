"""Benchmarks: one script per measurement, run as ``python -m benchmarks.<name> [--quick]``.

Each prints a table of side-by-side ratios taken in the same run and writes its numbers to
``results/bench/<name>.json`` (``<name>-quick.json`` for ``--quick``). See docs/performance.md.
"""
