"""The version of uisbench, in a module that imports nothing: the bench's plan and results and the CLI
read it from here without loading the facade (and its ``api``), and the code fingerprint of a stage
that records the version depends on this file alone. pyproject.toml states the same number
(tests/test_hookspecs.py checks they agree)."""

__version__ = "0.1.0"
