"""Fixtures for the generation tests: the World tokenizer and a random tiny RWKV-7 checkpoint."""

from __future__ import annotations

import pytest
import torch

from checkpoints import random_state_dict, tiny_config
from rwkvtune import AutoModel
from rwkvtune.tokenizer import WorldTokenizer


@pytest.fixture(scope="session")
def tokenizer() -> WorldTokenizer:
    return WorldTokenizer.default()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random L2-C128-V1000 official-format ``.pth`` and our fp32 model of it (eval mode)."""
    config = tiny_config()
    path = tmp_path_factory.mktemp("tiny") / "model.pth"
    torch.save(random_state_dict(config, seed=3), path)
    return path, AutoModel.from_pretrained(path, dtype="fp32").eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    return tiny_checkpoint[1]
