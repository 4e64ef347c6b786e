"""The package version (kept apart so low layers can read it without importing the package API)."""

__version__ = "0.2.0.dev0"
