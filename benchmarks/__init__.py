"""Benchmarks for lambdasource: every figure is a ratio against a baseline measured in the same run.

Run ``python -m benchmarks`` (all), ``python -m benchmarks --list``, or one of them, e.g.
``python -m benchmarks engine --events 1_000_000``. Results go to ``benchmarks/results/`` as JSON
(gitignored) and are printed as a Markdown table.
"""
