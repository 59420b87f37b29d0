"""Test-only helpers shared by tests/ and bench/: the reliability harness (fault injection, a TCP relay, database
restarts, worker processes with short heartbeats) and the input fuzzer.

Not shipped: pyproject.toml packages only tuner, model and kernels, and nothing under tuner/, model/ or kernels/
imports this package. It lives at the top level (not under tests/) because bench/reliability.py measures with the
same code the tests check, and a benchmark must not import from the test suite.
"""
