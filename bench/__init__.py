"""Benchmarks that boot real guests and print one table each.

Run from the repository root as modules, e.g. ``.venv/bin/python -m bench.boot --runs 1``
(``bench.boot``, ``bench.pool``, ``bench.net``, ``bench.snapshot``, ``bench.tui``; see
bench/README.md). They use ``engine``'s public API; the few engine internals a benchmark needs
come through ``bench.internals`` alone, and ``bench.benchlib`` holds what the scripts share.
"""
