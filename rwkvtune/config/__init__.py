"""Plain-data configuration (no torch needed)."""

from rwkvtune.config.model import PRESETS, RWKV7Config, config_from_shapes, expected_shapes, get_preset

__all__ = ["PRESETS", "RWKV7Config", "config_from_shapes", "expected_shapes", "get_preset"]
