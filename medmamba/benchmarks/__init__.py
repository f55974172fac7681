"""Benchmarks behind ``medmamba benchmark``: ratios against a baseline measured in the same run."""
