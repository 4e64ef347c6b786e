"""glibc malloc keeps large freed tensors in the heap once the trainer asks it to."""

import ctypes
import platform
import subprocess
import sys

import pytest

# In a fresh process, since the setting is process-wide: the bytes glibc holds in mmapped blocks
# (mallinfo2's hblkhd) while a 64 MiB tensor is alive, before and after keep_freed_host_memory().
MAPPED_WHILE_ALIVE = r"""
import ctypes, sys
import torch
from rwkvtune.engine.host_memory import keep_freed_host_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped_while_alive():
    tensor = torch.empty(16 * 2**20)  # 64 MiB of float32
    mapped = libc.mallinfo2().hblkhd
    del tensor
    return mapped

before = mapped_while_alive()
applied = keep_freed_host_memory()
print(before, applied, mapped_while_alive(), keep_freed_host_memory())
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(platform.system() != "Linux" or not _has_mallinfo2(), reason="needs glibc >= 2.33")
def test_large_tensors_move_from_mmap_to_the_heap():
    out = subprocess.run([sys.executable, "-c", MAPPED_WHILE_ALIVE], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    before, applied, after, again = int(out[0]), out[1], int(out[2]), out[3]
    assert before >= 64 * 2**20  # glibc's default: a fresh mapping for a block this large
    assert applied == "True" and again == "True"
    assert after < 64 * 2**20  # served from the heap, where a later step reuses it


def test_is_a_no_op_off_linux(monkeypatch):
    from rwkvtune.engine import host_memory

    host_memory.keep_freed_host_memory.cache_clear()
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    try:
        assert host_memory.keep_freed_host_memory() is False
    finally:
        host_memory.keep_freed_host_memory.cache_clear()
