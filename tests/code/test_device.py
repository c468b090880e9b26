"""Device helpers shared by the serving engines."""

from __future__ import annotations

import torch

from core.device import MemoryBackoff, is_oom


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
