"""The exporter's benchmark: a synthetic backlog, fake servers in their own processes, the real CLI.

Run ``python -m bench.run --help``; see ``bench/README.md``.
"""
