"""Benchmarks: scripts that print a table, side by side with QEMU, and record it in docs/benchmarks.md.

Run them from the repository root as modules, e.g. `python -m bench.boot --reps 20`; /work/shared/BENCHMARKS.md has
the rules they follow.
"""
