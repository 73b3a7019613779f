"""Experiments: monkeypatches a benchmark process can apply (``fleet_server.py
--patch NAME``) to measure a proposed change to code outside tests/perf
before and after, in the same session. Each module's docstring says what it
changes and where the real change would go; importing it applies it."""
