"""flan_jax benchmarks: each script prints a table and appends a JSON line to bench/results/.

Run them all with `make bench` (`python -m bench.run_all`), or one with `python -m bench.<name>`.
"""
