"""Loading a large file does not read it into RAM twice: same-dtype loads stay memory-mapped."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from checkpoints import random_state_dict, tiny_config

# Prints the growth of this process's peak RSS (VmHWM; ru_maxrss would carry the parent's peak across
# fork+exec) and of its anonymous memory (RssAnon: what cannot be paged back to the file).
MEMORY_OF_LOAD = textwrap.dedent("""
    import sys
    import torch
    from rwkvtune import AutoModel
    from rwkvtune.config import RWKV7Config
    from rwkvtune.model import RWKV7

    def kib(field):
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])

    with torch.device("meta"):  # the first meta-device use imports ~70 MB of torch machinery
        RWKV7(RWKV7Config(n_layer=1, n_embd=64, vocab_size=8))
    peak, anon = kib("VmHWM"), kib("RssAnon")
    model = AutoModel.from_pretrained(sys.argv[1], dtype=sys.argv[2], mmap=sys.argv[3] == "mmap")
    print((kib("VmHWM") - peak) * 1024, (kib("RssAnon") - anon) * 1024)
""")


def memory_of_load(path, dtype: str, mmap: bool = False) -> tuple[int, int]:
    result = subprocess.run([sys.executable, "-c", MEMORY_OF_LOAD, str(path), dtype, "mmap" if mmap else "copy"],
                            capture_output=True, text=True, check=True)
    peak, anon = result.stdout.split()[-2:]
    return int(peak), int(anon)


def test_loading_needs_one_model_size_of_memory(tmp_path):
    config = tiny_config(n_layer=1, n_embd=512, vocab_size=65536, dim_ffn=2048)
    path = tmp_path / "big.pth"
    torch.save(random_state_dict(config, dtype=torch.bfloat16), path)
    size = path.stat().st_size  # ~140 MB
    # Default: the model gets its own copy (1x); the file is only mapped, never read into RAM as a whole.
    _, anon = memory_of_load(path, "bf16")
    assert 0.9 * size < anon < 1.2 * size
    # mmap=True: the weights stay in the page cache, mapped, until used.
    peak, _ = memory_of_load(path, "bf16", mmap=True)
    assert peak < 0.1 * size
    # Converting to fp32 allocates the fp32 copy (2x the file) and nothing else that stays resident.
    _, anon = memory_of_load(path, "fp32")
    assert 1.9 * size < anon < 2.2 * size
