"""The base of every `params.yaml` section model (core/config.py, core/serving_params.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # extra="forbid": a typo such as `chunk_token:` must fail loudly, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)
