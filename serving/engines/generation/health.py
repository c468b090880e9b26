"""Whether the scheduler can serve: its thread is alive and its steps are not failing one after another.

Unhealthy means the scheduler thread exited other than by `stop()` (a bug outside a step), or the last
`max_failed_steps` steps all failed with an error other than out-of-memory (out-of-memory is handled by
preemption and is not a fault of the engine). Readiness reads it; `submit` refuses work while unhealthy.
"""

from __future__ import annotations

from serving.engines.types import EngineHealth


class StepHealth:
    """Counts consecutive failed steps and records why the thread died (written by the scheduler thread)."""

    def __init__(self, max_failed_steps: int) -> None:
        self.max_failed_steps = max_failed_steps
        self.failed_steps = 0
        self.last_error = ""
        self.died = ""

    def step_succeeded(self) -> None:
        self.failed_steps = 0

    def step_failed(self, exc: BaseException) -> None:
        self.failed_steps += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def thread_died(self, exc: BaseException) -> None:
        self.died = f"the scheduler thread died ({type(exc).__name__}: {exc})"

    def reset(self) -> None:
        """A fresh start (`ChatEngine.start`)."""
        self.failed_steps, self.last_error, self.died = 0, "", ""

    def check(self, thread_exited: bool) -> EngineHealth:
        """The state in words.

        Args:
            thread_exited: the scheduler thread is no longer alive although `stop()` was not called.
        """
        if self.died or thread_exited:
            return EngineHealth(False, self.died or "the scheduler thread exited")
        if self.failed_steps >= self.max_failed_steps:
            return EngineHealth(
                False, f"the last {self.failed_steps} generation steps failed (last error: {self.last_error})"
            )
        return EngineHealth(True)
