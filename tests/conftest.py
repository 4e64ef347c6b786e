"""Shared test settings: one torch thread, so the suite is stable on a shared 2-core machine."""

import os

os.environ.setdefault("RWKV_V7_ON", "1")  # the rwkv reference runtime reads this at import
os.environ.setdefault("RWKV_JIT_ON", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
