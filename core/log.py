"""Structured logging: `key=value` pairs on one line, the same format for every stage and service."""

from __future__ import annotations

import logging

from core.config import ConfigError, environment

_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def get_logger(name: str) -> logging.Logger:
    """A logger; the first call configures the root logger at `LOG_LEVEL` (via core.config) unless one is set up.

    Raises:
        ConfigError: `LOG_LEVEL` is not a level name `logging` knows.
    """
    root = logging.getLogger()
    if not root.handlers:
        level = environment().log_level
        if level not in _LEVELS:
            raise ConfigError(f"LOG_LEVEL={level!r} is not a log level: set it to one of {', '.join(_LEVELS)}")
        logging.basicConfig(level=level, format=_FORMAT)
    return logging.getLogger(name)
