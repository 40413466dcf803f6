"""Measured benchmarks: training-step cost, inference cost, Table 2 reproduction.

Every script prints its figures and writes them, with the machine they ran on,
to ``benchmarks/results/<name>.json``. See ``docs/RESULTS.md``.
"""
