"""Serving settings: `params.yaml`'s `serving` section plus environment overrides, read in one place.

Every field of `core.serving_params.ServingParams` can be overridden by `SERVING_<FIELD>` (upper case), e.g.
`SERVING_API_KEYS=key1,key2` or `SERVING_CHAT_MAX_BATCH_SIZE=8`; the value is validated like the file's.
The registry comes from `MLFLOW_TRACKING_URI` (via `core.config.tracking_uri`), the Chroma index from
`params.yaml`'s `index` section, whose `chroma_host`/`chroma_port`/`chroma_path` the server also takes from
`SERVING_CHROMA_HOST`/`_PORT`/`_PATH` (a container points at a Chroma server without editing the bento).
Nothing else in `serving/` reads the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError

from core.config import ConfigError, IndexParams, Params, load_params, tracking_uri
from core.paths import PROJECT_ROOT
from core.serving_params import ServingParams

ENV_PREFIX = "SERVING_"
S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class Settings:
    """Everything the serving layer reads at start-up."""

    serving: ServingParams
    index: IndexParams
    chat_name: str
    embedder_name: str
    tracking_uri: str
    retrieval_name: str = "retrieval"
    device: str | None = None
    """`MODELPLATFORM_DEVICE` (e.g. `cpu`, `cuda:1`); None lets `core.device.pick_device` choose."""
    log_level: str = "INFO"
    """`LOG_LEVEL` for the `serving` and `core` loggers (BentoML leaves the root logger at WARNING)."""
    debug_step_delay_ms: float = 0.0
    """`SERVING_DEBUG_STEP_DELAY_MS`: test-only, every chat forward sleeps this long (`serving/faults.py`)."""
    upstream_keys: dict[str, str] = field(default_factory=dict, repr=False)
    """Each upstream's key, read from the variable its `api_key_env` names (kept out of repr and logs)."""

    def cache_root(self) -> Path:
        p = Path(self.serving.cache_dir)
        return p if p.is_absolute() else PROJECT_ROOT / p


def decode_threads(serving: ServingParams) -> int | None:
    """torch threads for the chat engine's decode steps: `chat_decode_threads` when set; otherwise 1 for the int8
    chat variant (a CPU model) and, for float, the prefills' count (None: unchanged).

    Why (2026-12-02, 2 cores shared with the load client; `SERVING_CHAT_DECODE_THREADS=1` against unset, the int8
    server started both ways): one stream 51.6-53.4 against 30.7-35.8 tokens/s, 4 streams 138-143 against 102-119,
    16 streams 261-295 against 244-271; RAG at 4 concurrent 8.99 against 8.89 s an answer (its prefills keep both
    cores). An int8 decode step is small kernels: with both cores in every op, the op waits whenever the event loop
    or anything else preempts one of its two threads. The float model's matmuls use the second core (one thread for
    everything: 97-104 against 112 tokens/s at 16 streams), so float keeps it.
    """
    if serving.chat_decode_threads is not None:
        return serving.chat_decode_threads
    return 1 if serving.chat_variant == "int8" else None


def service_resources(serving: ServingParams, visible_gpus: int | None = None) -> dict[str, Any]:
    """`@bentoml.service(resources=...)` from the settings.

    BentoML uses the declaration to schedule (BentoCloud, Kubernetes) and, under `bentoml serve`, to give
    the worker its `CUDA_VISIBLE_DEVICES`; the models go to CUDA when torch sees a GPU and stay on the CPU
    otherwise (core/device.py), so a GPU claimed on a machine without one still serves, on the CPU.

    Args:
        serving: the serving settings (`resources_*`).
        visible_gpus: CUDA GPUs on this machine (default: torch's count, which does not initialise CUDA).
    """
    if visible_gpus is None:
        visible_gpus = torch.cuda.device_count()
    gpus = serving.resources_gpu
    if gpus == "auto":
        gpus = 1 if visible_gpus > 0 else 0
    out: dict[str, Any] = {}
    if serving.resources_cpu:
        out["cpu"] = serving.resources_cpu
    if serving.resources_memory:
        out["memory"] = serving.resources_memory
    if gpus:
        out["gpu"] = gpus
        if serving.resources_gpu_type:
            out["gpu_type"] = serving.resources_gpu_type
    return out


def _overridden(section: S, names: Iterable[str], environ: dict[str, str], label: str) -> S:
    """`section` with its `SERVING_<NAME>` environment overrides applied, validated like the file's values.

    Raises:
        ConfigError: an override is invalid; the message names the variable and why.
    """
    out: dict[str, object] = {}
    for name in names:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name == "api_keys":
            out[name] = tuple(k.strip() for k in raw.split(",") if k.strip())
        elif name == "upstreams":
            try:
                out[name] = json.loads(raw) if raw.strip() else {}
            except ValueError as e:
                raise ConfigError(f"invalid {ENV_PREFIX}UPSTREAMS: not a JSON object ({e})") from None
        elif raw.strip().lower() in ("", "none", "null"):
            out[name] = None
        else:
            out[name] = raw
    try:
        return type(section).model_validate({**section.model_dump(), **out})
    except ValidationError as e:
        why = "; ".join(f"{ENV_PREFIX}{'.'.join(map(str, x['loc'])).upper()}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"invalid {label} override: {why}") from None


def upstream_keys(serving: ServingParams, environ: dict[str, str]) -> dict[str, str]:
    """Each upstream's key from the environment variable its `api_key_env` names.

    Raises:
        ConfigError: a named variable is unset or empty (the upstream would answer every request with 401).
    """
    out = {}
    for name, upstream in serving.upstreams.items():
        if upstream.api_key_env is None:
            continue
        key = environ.get(upstream.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"upstream `{name}` takes its key from ${upstream.api_key_env}, which is not set: export it, or set "
                f"serving.upstreams.{name}.api_key_env to null for an upstream without keys"
            )
        out[name] = key
    return out


def load_settings(params: Params | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build the serving settings.

    Args:
        params: parsed params (default: the project's `params.yaml`).
        environ: environment to read overrides from (default: `os.environ`).

    Returns:
        Validated, frozen settings.

    Raises:
        ConfigError: an override is invalid; the message names the variable and why.
    """
    p = params if params is not None else load_params()
    env = dict(os.environ) if environ is None else environ
    serving = _overridden(p.serving, ServingParams.model_fields, env, "serving")
    index = _overridden(p.index, ("chroma_host", "chroma_port", "chroma_path"), env, "index")
    uri = env.get("MLFLOW_TRACKING_URI") or tracking_uri()
    try:
        delay = float(env.get("SERVING_DEBUG_STEP_DELAY_MS") or 0)
    except ValueError:
        raise ConfigError("invalid SERVING_DEBUG_STEP_DELAY_MS: give milliseconds as a number") from None
    return Settings(
        upstream_keys=upstream_keys(serving, env),
        serving=serving,
        index=index,
        chat_name=p.models.chat_int8_name if serving.chat_variant == "int8" else p.models.chat_name,
        embedder_name=p.models.embedder_name,
        retrieval_name=p.models.retrieval_name,
        tracking_uri=uri,
        device=env.get("MODELPLATFORM_DEVICE") or None,
        log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
        debug_step_delay_ms=delay,
    )
