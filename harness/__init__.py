"""Helpers for running servers on loopback ports, shared by the tests, the benchmark and the image check."""
