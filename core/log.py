"""Structured logging: `key=value` pairs on one line, the same format for every stage and service."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format=_FORMAT)
    return logging.getLogger(name)
