"""Model and data shared by tests/test_ddp.py and its worker processes (identical on every rank by seed)."""

import torch


def build_model():
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n-pst.yaml", nc=3, verbose=False).train()
    model.args = get_cfg()
    return model


def half_batch(rank: int) -> dict:
    """Rank r's half of a 2-image batch: image r and its boxes (batch_idx renumbered to 0)."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 64, 64, generator=g)
    boxes = [torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]), torch.tensor([[0.7, 0.6, 0.3, 0.5]])]
    cls = [torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0]])]
    n = len(boxes[rank])
    return {"img": img[rank : rank + 1], "bboxes": boxes[rank], "cls": cls[rank], "batch_idx": torch.zeros(n)}
