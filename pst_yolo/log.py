"""One-time log lines: a fallback, a choice or a warning is said once per process, not once per forward.

The first forward of a model may be the one ``torch.compile`` traces (``fullgraph=True`` on a GPU): a logging call
there would break the graph, so pst-yolo's logger is registered with torch.compile as reorderable (its lines are
emitted after the compiled graph runs; the start-up hook calls :func:`allow_under_compile` when torch.compile's
configuration is imported).
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("pst_yolo")
_LOGGED: set = set()


def log_once(key, msg, level=logging.INFO):
    """Log ``msg`` once per process for ``key`` (so a fallback is visible but not spammy)."""
    if key not in _LOGGED:
        _LOGGED.add(key)
        LOGGER.log(level, msg)


def allow_under_compile(config) -> None:
    """Register ``LOGGER.log`` with ``torch._dynamo.config`` as a reorderable logging function (idempotent; a torch
    without the setting is left alone)."""
    functions = getattr(config, "reorderable_logging_functions", None)
    if functions is not None:
        functions.add(LOGGER.log)
