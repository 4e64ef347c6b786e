"""WKV7 operators: one contract (``wkv7``), several backends, the reference scan as the spec."""

from rwkvtune.ops.wkv7 import BACKENDS, check_backend_name, wkv7

__all__ = ["BACKENDS", "check_backend_name", "wkv7"]
