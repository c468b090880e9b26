"""Device helpers shared by the serving engines."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from core.device import MemoryBackoff, is_oom, return_freed_memory


def test_out_of_memory_is_recognised_on_every_device() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only runtime errors come from an allocator


def test_backoff_halves_on_failure_and_regrows_one_step_at_a_time() -> None:
    b = MemoryBackoff(16, recovery=3)
    assert b.shrink(10) == 5  # half of the batch that failed
    assert b.shrink(16) == 5  # never grows on a failure
    for _ in range(3):
        b.succeeded()
    assert b.value == 6
    b.shrink(1)
    assert b.value == 1  # at least one
    for _ in range(3 * 20):
        b.succeeded()
    assert b.value == 16  # back to the cap, never past it


def _resident_mb() -> float:
    rollup = Path("/proc/self/smaps_rollup").read_text()
    return next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Rss:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux /proc")
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    """Memory freed in the middle of the heap (a live allocation above it, as after loading a model) stays with the
    process until `return_freed_memory`."""
    blocks = [bytearray(b"x" * 8192) for _ in range(20_000)]  # ~160 MB of heap blocks, touched
    sentinel = bytearray(b"y" * 8192)  # allocated after them: glibc cannot shrink the heap's top past it
    del blocks
    gc.collect()
    before = _resident_mb()
    return_freed_memory()
    assert _resident_mb() < before - 100, "the freed blocks stayed resident"
    assert sentinel[0] == ord("y")
