"""The tool the tool-calling tests offer, in each dialect: one schema, so the engine, OpenAI and Anthropic tests
ask for the same thing (bounded: `maxLength` and an enum, so every call completes within a few dozen tokens)."""

from __future__ import annotations

from typing import Any

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_DESCRIPTION = "The weather now in a city"
WEATHER_OPENAI: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "description": WEATHER_DESCRIPTION, "parameters": WEATHER_PARAMETERS},
}
WEATHER_ANTHROPIC: dict[str, Any] = {
    "name": "get_weather", "description": WEATHER_DESCRIPTION, "input_schema": WEATHER_PARAMETERS,
}  # fmt: skip
