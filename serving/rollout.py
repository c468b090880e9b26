"""Live rollout: the server follows the registry aliases it serves, with no restart.

A thread checks `chat@<chat_alias>` and `retrieval@<retrieval_alias>` every `serving.rollout_poll_s` seconds (the
retrieval unit names the embedder, reranker and chunks, so those follow it). When either points at a version other
than the one served, it loads the new set exactly as start-up does (`load_models`: resolve, cache, check the index
against the embedder, load) and warms it beside the running set. Then it switches: one reference swap (`Live`), so
every new request sees the whole new set and no request sees a mix; requests already running finish on the old set,
which is stopped and freed once it is idle.

An embedder change never pairs a query embedder with another embedder's vectors: `load_models` opens the active
Chroma collection only if it was built by the embedder version the unit names, so until the `index` stage has built
and activated that collection the load fails, the old set keeps serving (with its own collection, which the index
stage keeps), and `/v1/status` says why; the next check tries again. Any failed load does the same.

vLLM and TGI restart to change models; KServe and Seldon roll pods. In-process, this is what BentoML leaves to the
service: it has no model-swap hook, so the swap is ours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.device import return_freed_memory
from core.errors import RegistryError
from core.log import get_logger
from core.registry import Registry
from serving.engines.types import EngineObserver
from serving.handlers import Handlers
from serving.heap import collect_all
from serving.platform import Platform
from serving.registry import load_models
from serving.schemas.status import RolloutStatus
from serving.settings import Settings

log = get_logger(__name__)

RETRY_MAX_S = 600.0
"""Longest wait before loading the same failed versions again (the wait doubles from the poll interval)."""

Build = Callable[[Settings], Platform]
"""Load, build and warm a platform for what the registry's aliases name now (start-up's path)."""


def build_platform(settings: Settings, observer: EngineObserver | None = None) -> Platform:
    platform = Platform.build(load_models(settings), settings, observer=observer)
    platform.start()
    return platform


@dataclass(frozen=True)
class Served:
    """One consistent set: the platform and the handlers over it (swapped together)."""

    platform: Platform
    handlers: Handlers


class Live:
    """What serves now. Routes read `handlers` once per request; a switch replaces the pair in one assignment."""

    def __init__(self, platform: Platform, settings: Settings, rollout: Rollout | None = None) -> None:
        self.settings = settings
        self.rollout = rollout
        self.served = Served(platform, Handlers.build(platform, settings, rollout))

    @property
    def platform(self) -> Platform:
        return self.served.platform

    @property
    def handlers(self) -> Handlers:
        return self.served.handlers

    def switch(self, platform: Platform) -> Platform:
        """Serve `platform` from the next request on; returns the one it replaces."""
        old = self.served.platform
        self.served = Served(platform, Handlers.build(platform, self.settings, self.rollout))
        return old


class Rollout:
    """Watches the served aliases and switches `live` to new versions (see the module doc)."""

    def __init__(self, settings: Settings, build: Build, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.build = build
        self.clock = clock
        self.live: Live | None = None
        self.poll_s = settings.serving.rollout_poll_s
        self._status = RolloutStatus(poll_s=self.poll_s, state="watching" if self.poll_s else "off")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one check at a time
        self._retiring: Platform | None = None
        self._failed: tuple[dict[str, str], float, float] | None = None
        """The versions whose load failed, when to try them again, and the wait that gave (doubling per failure):
        a broken version is not reloaded every poll, and an index still being built is picked up when ready."""

    def status(self) -> RolloutStatus:
        return self._status

    def start(self, live: Live) -> None:
        self.live = live
        if self.poll_s and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)
            self._thread.start()
            log.info("rollout watching %s every %gs", ", ".join(self._aliases()), self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _aliases(self) -> list[str]:
        s = self.settings
        return [f"{s.chat_name}@{s.serving.chat_alias}", f"{s.retrieval_name}@{s.serving.retrieval_alias}"]

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as e:  # the watcher never dies: the next check tries again
                log.error("rollout check failed: %r", e, exc_info=e)

    def wanted(self) -> dict[str, str]:
        """The versions the aliases point at now.

        Raises:
            RegistryError: the registry cannot be reached, or an alias is gone.
        """
        s, registry = self.settings, Registry(self.settings.tracking_uri)
        return {
            "chat": registry.resolve(s.chat_name, s.serving.chat_alias),
            "retrieval": registry.resolve(s.retrieval_name, s.serving.retrieval_alias),
        }

    def serving(self) -> dict[str, str]:
        assert self.live is not None
        p = self.live.platform
        return {"chat": p.chat_info.version, "retrieval": p.retrieval_info.version}

    def check(self) -> bool:
        """One check: switch if an alias moved and the new set loads. Returns whether it switched."""
        with self._lock:
            now = self.clock()
            try:
                wanted = self.wanted()
            except RegistryError as e:
                self._set(checked_at=now, state="failed", reason=f"registry: {e}")
                return False
            serving = self.serving()
            if wanted == serving:
                self._failed = None
                self._set(checked_at=now, state="watching", reason=None, target=None)
                return False
            again = self._failed is not None and self._failed[0] == wanted
            if again and self._failed is not None and now < self._failed[1]:
                self._set(checked_at=now)  # still failed, same reason: wait for the retry time
                return False
            moved = ", ".join(f"{k} {serving[k]} -> {v}" for k, v in wanted.items() if serving[k] != v)
            log.info("rollout: alias moved (%s); loading the new versions beside the running ones", moved)
            self._set(checked_at=now, state="loading", reason=moved, target=wanted)
            try:
                platform = self.build(self.settings)
            except Exception as e:  # a failed load (missing index, bad files, out of memory) keeps the old set
                wait = min(self._failed[2] * 2, RETRY_MAX_S) if again and self._failed else self.poll_s
                self._failed = (wanted, self.clock() + wait, wait)
                reason = f"not switched ({moved}): {e}; next try in {wait:g}s"
                (log.info if again else log.warning)("rollout: %s; still serving %s", reason, serving)
                self._set(state="failed", reason=reason)
                return False
            self._failed = None
            assert self.live is not None
            self._retiring = self.live.switch(platform)
            log.info("rollout: switched (%s); new requests go to the new versions", moved)
            self._set(state="draining", reason=moved, switched_at=self.clock(), switches=self._status.switches + 1)
            self._retire()
            self._set(state="watching", reason=None, target=None)
            return True

    def _retire(self) -> None:
        """Let the old set's requests finish (up to the request timeout), then stop it and free its memory.

        The old platform is held only here (`_retiring`, then a local), so dropping it frees its models.
        """
        old, self._retiring = self._retiring, None
        assert old is not None
        deadline = time.monotonic() + self.settings.serving.request_timeout_s + 5
        while old.busy() and time.monotonic() < deadline:
            self._stop.wait(0.1)  # the old engines' own threads finish the work; nothing to signal us
        left = old.busy()
        old.stop()
        del old
        collect_all()  # the old models were frozen with the heap (serving/heap.py): thawed to be freed
        return_freed_memory()
        log.info("rollout: previous versions stopped and freed (%d requests cut at the deadline)", left)

    def _set(self, **changes: object) -> None:
        self._status = self._status.model_copy(update=changes)
