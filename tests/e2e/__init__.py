"""End-to-end tests: real HTTP against `kessai serve` subprocesses (see conftest.py)."""
