"""Device and dtype selection, shared by training, evaluation and serving.

The configured device comes from `MODELPLATFORM_DEVICE` through `core.config` (the pipeline) or from
`serving.settings.Settings.device` (the server, which passes it in).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

import torch

from core.config import environment


def pick_device(configured: str | None = None) -> str:
    """The device models run on.

    Args:
        configured: an explicit choice (`cpu`, `cuda`, `cuda:1`, ...), e.g. the server's `Settings.device`.

    Returns:
        `configured` when given, else `MODELPLATFORM_DEVICE` (read by `core.config`), else `cuda` when torch
        sees a GPU, else `cpu`.
    """
    configured = configured or environment().device
    if configured:
        return configured
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> torch.dtype:
    # fp32 on CPU: this AVX2-only CPU runs bf16 matmul ~200x slower than fp32 (measured, torch 2.13).
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory (CUDA, MPS or the CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory(device: torch.device | str) -> None:
    """Give cached blocks back after an out-of-memory error so a smaller retry can fit."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's `malloc_trim`; elsewhere, nothing to do).

    glibc keeps freed memory for reuse, so a process that built and dropped large tensors keeps them in its
    resident set. Measured (PSS from `/proc/self/smaps_rollup` around `core.loading.load_chat` in one process):
    loading the int8 chat variant, when it built a float skeleton and swapped int8 Linears in, added 584 MB to the
    process, and 401 MB after this (its int8 weights are 328 MB); with the skeleton on the meta device
    (`core.quantize.load_quantized`) 321 MB, 268 MB after this.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryBackoff:
    """A batch-size cap that halves on out-of-memory and grows back by one after `recovery` good batches.

    One mechanism for both serving engines: the chat engine's running slots, the embedder's texts per pass.
    """

    def __init__(self, cap: int, recovery: int = 64) -> None:
        self.cap = cap
        self.value = cap
        self.recovery = recovery
        self._ok = 0

    def shrink(self, failed_size: int) -> int:
        """A batch of `failed_size` ran out of memory: allow at most half of it from now on."""
        self.value, self._ok = max(1, min(self.value, failed_size // 2)), 0
        return self.value

    def succeeded(self) -> None:
        self._ok += 1
        if self.value < self.cap and self._ok >= self.recovery:
            self.value, self._ok = self.value + 1, 0
