"""Benchmark harness for cbm_luigi: `python -m bench.run [--quick]` (see bench/README.md)."""
