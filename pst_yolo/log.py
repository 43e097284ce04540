"""One-time log lines: a fallback, a choice or a warning is said once per process, not once per forward."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("pst_yolo")
_LOGGED: set = set()


def log_once(key, msg, level=logging.INFO):
    """Log ``msg`` once per process for ``key`` (so a fallback is visible but not spammy)."""
    if key not in _LOGGED:
        _LOGGED.add(key)
        LOGGER.log(level, msg)
