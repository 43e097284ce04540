"""Launch-bound cost of a forward pass, measured on any device with ``torch.profiler``: the top-level aten ops (each is
at least one kernel launch on a GPU) and the host synchronisations (``aten::_local_scalar_dense``: ``bool(tensor)``,
``.item()``), which stall a GPU stream and rule out CUDA-graph capture. Used by pst-yolo bench and the tests."""

from __future__ import annotations

import torch
from torch.profiler import profile

SYNC = "aten::_local_scalar_dense"


def ops_and_syncs(model, x) -> tuple[int, int]:
    """(top-level aten ops, host syncs) of one ``model(x)`` under ``torch.inference_mode`` (after one warm-up call)."""
    with torch.inference_mode():
        model(x)
        with profile() as p:
            model(x)
    events = p.events()
    top = [e for e in events if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top), sum(e.name == SYNC for e in events)
