"""Test-only slowness for a served model, so tests wait on events instead of hoping the CPU is slow.

`SERVING_DEBUG_STEP_DELAY_MS` (read in `serving/settings.py`; off by default and never set in
`params.yaml`) makes every forward pass of the chat model take at least that long. A test that needs
requests to still be generating when it acts (fill every slot, then expect 429; disconnect mid-answer)
then holds on any machine, fast or slow, and it reads the engine's gauges to know when to act.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from core.log import get_logger

log = get_logger(__name__)


class StepDelay:
    """A forward pre-hook that sleeps `seconds` before each forward of `module` (removable)."""

    def __init__(self, module: torch.nn.Module, seconds: float) -> None:
        self.seconds = seconds
        self._handle = module.register_forward_pre_hook(self._hook)
        log.warning("test-only step delay installed: every forward of %s sleeps %.3fs", type(module).__name__, seconds)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        time.sleep(self.seconds)

    def remove(self) -> None:
        self._handle.remove()
