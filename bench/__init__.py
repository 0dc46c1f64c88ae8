"""Benchmarks for ``make bench``: medians of several runs, peers measured in the same run."""
