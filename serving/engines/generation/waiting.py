"""The waiting queue between `submit` (event-loop side) and `admit` (scheduler thread).

A FIFO bounded at `max_queue` requests beyond the free slots, under one condition variable that also
carries the stop signal. `on_change` is called under the lock when the event-loop side changes the
length (`put`, `remove`), so a gauge report cannot interleave with an admission; the scheduler reports
its own changes (admit, requeue, drain) once it has updated the running count too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from core.errors import QueueFull
from serving.engines.generation.request import Request


class WaitingQueue:
    """Requests waiting for a slot, oldest first; thread-safe."""

    def __init__(self, max_queue: int, on_change: Callable[[], None] = lambda: None) -> None:
        self.max_queue = max_queue
        self.stopping = False
        self._cv = threading.Condition()  # re-entrant: on_change may read len(self)
        self._items: deque[Request] = deque()
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._items)

    def put(self, req: Request, *, free_slots: int, retry_after_s: int) -> None:
        """Queue `req` behind the others.

        Raises:
            QueueFull: `max_queue` requests beyond the free slots are already waiting.
        """
        with self._cv:
            if len(self._items) >= self.max_queue + free_slots:
                raise QueueFull(
                    f"the chat queue is full ({len(self._items)} requests waiting); retry after {retry_after_s}s",
                    retry_after_s=retry_after_s,
                )
            self._items.append(req)
            self._on_change()
            self._cv.notify()

    def remove(self, req: Request) -> bool:
        """Take `req` out if it is still waiting (a cancelled request); whether it was."""
        with self._cv:
            if req not in self._items:
                return False
            self._items.remove(req)
            self._on_change()
            return True

    def pop(self) -> Request | None:
        """The oldest waiting request, or None."""
        with self._cv:
            if not self._items:
                return None
            req = self._items.popleft()
            return req

    def push_front(self, reqs: Iterable[Request]) -> None:
        """Put preempted requests back ahead of newer ones, in their original order."""
        with self._cv:
            self._items.extendleft(reversed(list(reqs)))

    def drain(self) -> list[Request]:
        """Take every waiting request out (the engine is ending)."""
        with self._cv:
            items, self._items = list(self._items), deque()
            return items

    def wait(self, busy: Callable[[], bool]) -> bool:
        """Block until a request waits or `busy()` (rows are running); False once `stop` was called."""
        with self._cv:
            while not self.stopping and not self._items and not busy():
                self._cv.wait()
            return not self.stopping

    def stop(self) -> None:
        """Wake the scheduler and make `wait` return False."""
        with self._cv:
            self.stopping = True
            self._cv.notify_all()

    def reopen(self) -> None:
        """Accept work again after `stop` (a restarted engine)."""
        with self._cv:
            self.stopping = False
