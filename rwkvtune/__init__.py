"""rwkvtune: train RWKV-7 language models (pretraining, SFT, GRPO, LoRA, infinite context)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rwkvtune.version import __version__

if TYPE_CHECKING:
    from rwkvtune.hub import AutoModel, AutoTokenizer

__all__ = ["AutoModel", "AutoTokenizer", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import rwkvtune.tokenizer` (or .config) does not load torch.
    if name in ("AutoModel", "AutoTokenizer"):
        from rwkvtune import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'rwkvtune' has no attribute {name!r}")
