"""Benchmarks: wrk against the platform, its floors and its peers (`python -m bench`), and in-process engine timings."""
