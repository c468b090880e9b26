"""JSON schemas as the constrained decoder reads them: objects closed unless they say otherwise.

A schema that lists `properties` but says nothing of `additionalProperties` allows any other key by the JSON
Schema spec; a small model held to it invents keys until max_tokens runs out (seen here: the 135M model asked
for `get_time`'s `{"zone": ...}` wrote extra keys for all 60 tokens). xgrammar's default `strict_mode` (vLLM's and
SGLang's behaviour) closes such objects; llguidance has no option for it, so this does the same before
compiling. A schema that sets `additionalProperties` (or has no `properties`) is left as it is.
"""

from __future__ import annotations

from typing import Any

JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is spaced (llguidance's JSON options): compact, as `json.dumps` spaces it and as the chat
template renders tool calls; no free whitespace, on which a small model can spend its whole budget."""

_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_ONE = ("items", "additionalItems", "not", "if", "then", "else")


def close_objects(schema: Any) -> Any:
    """A copy of `schema` where every object with `properties` and no `additionalProperties` forbids other keys."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: close_objects(v) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [close_objects(v) for v in out[key]]
    for key in _SCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = close_objects(out[key])
    return out
