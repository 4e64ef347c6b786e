"""``rwkv7-hf`` (PyPI 0.9.0, pure PyTorch) as the reference for the Hugging Face fla layout of RWKV-7.

Its classes are imported straight from the package, never through ``trust_remote_code``: a directory is read
only through its ``config.json`` and ``*.safetensors``, so the code files a converter copies next to them
play no part. ``rwkv7_hf`` is imported inside the functions; tests that use this module call
``pytest.importorskip("rwkv7_hf")`` first.

The fields of ``config.json`` that fix the model (everything else has a default that fits an official
checkpoint): ``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``head_dim`` (or ``num_heads``),
``intermediate_size``, ``decay_low_rank_dim``, ``a_low_rank_dim``, ``v_low_rank_dim``,
``gate_low_rank_dim``. ``norm_eps`` may be left out: its default 1e-5 is the official one (LayerNorms; the
GroupNorm uses ``head_dim * norm_eps``), and any other value changes the logits.
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_hf_model(directory: Path):
    """rwkv7-hf's ``RWKV7ForCausalLM`` for an fla-layout ``directory``, float32 on the CPU, in eval mode.

    Raises ``AssertionError`` when a weight is missing, unexpected or mis-shaped: ``from_pretrained`` would
    otherwise only warn and leave a randomly initialised parameter behind.
    """
    from rwkv7_hf import RWKV7ForCausalLM

    model, info = RWKV7ForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    assert not problems, f"rwkv7-hf did not load {directory} cleanly: {problems}"
    return model.float().eval()


@torch.no_grad()
def hf_logits(directory: Path, ids: list[int]) -> torch.Tensor:
    """Logits ``[T, V]`` (float32) of ``ids`` (``T`` token ids) in one forward of rwkv7-hf's model."""
    model = load_hf_model(directory)
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def hf_greedy(directory: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """The ``new_tokens`` greedy (argmax) continuation ids of ``prompt_ids`` with rwkv7-hf's model.

    The prompt ``[1, T]`` goes through once; then each chosen token ``[1, 1]`` is fed with the recurrent
    cache (``past_key_values``). No end-of-text stop: exactly ``new_tokens`` ids come back, 0 included.
    """
    model = load_hf_model(directory)
    out = model(input_ids=torch.tensor([prompt_ids], dtype=torch.long), use_cache=True)
    chosen: list[int] = []
    for step in range(new_tokens):
        if step:
            out = model(input_ids=torch.tensor([chosen[-1:]], dtype=torch.long),
                        past_key_values=out.past_key_values, use_cache=True)
        chosen.append(int(out.logits[0, -1].argmax()))
    return chosen


def convert_with_rwkv7_hf(pth: Path, output: Path, precision: str = "fp32",
                          vocab_file: Path | None = None) -> Path:
    """Convert an official ``pth`` with rwkv7-hf's converter (``rwkv7-hf-convert``) into ``output``.

    ``output`` receives ``config.json``, ``generation_config.json``, ``model.safetensors``,
    ``tokenizer_config.json``, ``special_tokens_map.json``, ``chat_template.jinja`` and the package's code
    (``configuration_rwkv7.py``, ``modeling_rwkv7.py``, ``cache_rwkv7.py``, ``ops_rwkv7.py``,
    ``tokenization_rwkv7.py``); ``rwkv_vocab_v20230424.txt`` only when ``vocab_file`` is given (a copy).
    ``precision`` is one of fp32, fp16, bf16. Returns ``output``.
    """
    from rwkv7_hf import converter

    argv = ["--input", str(pth), "--output", str(output), "--precision", precision]
    if vocab_file is not None:
        argv += ["--vocab-file", str(vocab_file)]
    converter.convert(converter.parse_args(argv))
    return output
