"""Helpers shared by the tests (not collected: no test_*.py here). Tests import them as `helpers.<module>`:
pytest's default import mode puts `tests/` (the directory of the rootless test files) on `sys.path`."""
