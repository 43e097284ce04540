"""Checkpoints written by earlier pst-yolo releases load and compute what they computed then.

``tests/data/pst_layers_v0.3.0.pt`` was written by pst-yolo 0.3.0 (before the fine branch moved to ``pst_yolo.fine``)
with ``tests/data/make_pst_layers_v0.3.0.py``: PST layers with every switch (gating, separate fine K/V, linear
attention, nearest CPE with default init, the residual C3k2PST), pickled whole as Ultralytics pickles its models, and
their eval outputs at k=0 and k=8.
"""

from pathlib import Path

import pytest
import torch
import ultralytics.nn.tasks  # noqa: F401  (the start-up hook registers pst-yolo with Ultralytics first)

from pst_yolo.runtime import set_topk

CKPT = Path(__file__).parent / "data" / "pst_layers_v0.3.0.pt"


@pytest.mark.parametrize("k", [0, 8])
def test_v030_layers_load_and_give_the_same_outputs(k):
    ckpt = torch.load(CKPT, weights_only=False)
    layers = ckpt["layers"].eval()
    set_topk(layers, k)
    with torch.no_grad():
        for i, (m, want) in enumerate(zip(layers, ckpt["outputs"][k])):
            got = m([ckpt["x"], ckpt["u"]])
            # 1e-6, not bit-exact: the 0.3.0 code itself reproduces its outputs only to ~1e-7 (CPU matmul blocking)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=f"layer {i} ({type(m).__name__}) at k={k}")
