"""Placeholder: replaced by the chunked implementation."""

from rwkvtune.ops.reference import wkv7_reference as wkv7_chunked  # noqa: F401
