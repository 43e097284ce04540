"""The attention visualiser draws exactly the fine regions the model selected, for detection and classification,
offline, and costs nothing when not recording."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import pst_yolo.fine as fine
import pst_yolo.modules as modules
from pst_yolo.visualize import AttentionRecorder, load_model, render, visualize

CLS_YAML = """# tiny classification model with a PST fusion of P4 (finer) and P5 (coarser), for the tests
nc: 3
scales:
  n: [0.50, 0.25, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 1, Conv, [512, 3, 2]] # 3 P4/16
  - [-1, 1, Conv, [512, 3, 2]] # 4 P5/32
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 3], 1, Concat, [1]]
  - [[-1, 4], 1, PST, [256]] # 7
head:
  - [-1, 1, Classify, [nc]]
"""


@pytest.fixture(scope="module")
def det_image(tmp_path_factory):
    from pst_yolo.data import make_detection_dataset

    root = make_detection_dataset(tmp_path_factory.mktemp("vis_data"), n_train=1, n_val=2, imgsz=96).parent
    return root / "images" / "val"


class SelectionSpy:
    """Records what the module's fine branch itself computed (the ground truth the drawing must match)."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = fine.select_fine_tokens

        def spy(*args, **kwargs):
            out = original(*args, **kwargs)
            self.calls.append(tuple(t.clone() for t in out[:2]))  # (index, valid); the joint fusion also asks for regions
            return out

        monkeypatch.setattr(fine, "select_fine_tokens", spy)  # where the fine branch calls it


def expected_mask(index, valid, fine_hw, size):
    """Pixel mask of the selected fine tokens, derived from the module's indices independently of the visualiser."""
    h, w = fine_hw
    cell = size // w
    mask = np.zeros((size, size), bool)
    for i in index[valid].tolist():
        r, c = divmod(i, w)
        mask[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = True
    return mask


def test_drawn_regions_are_the_selected_indices(det_image, tmp_path, monkeypatch):
    yolo = load_model("yolo11n-pst.yaml", k=4)
    spy = SelectionSpy(monkeypatch)  # after building: the stride probe at build time also runs the fine branch
    image = sorted(det_image.iterdir())[0]
    [vis] = visualize(yolo, image, tmp_path, imgsz=96, display=192)
    assert len(spy.calls) == len(vis.recording.psa) == 2  # two PST layers, one block each
    png = cv2.imread(str(vis.path))
    assert png is not None and png.shape == vis.canvas.shape and png.std() > 10
    assert np.array_equal(png, vis.canvas)
    head_tiles = [t for t in vis.tiles if t.mask is not None]
    assert len(head_tiles) == sum(r.heads for r in vis.recording.psa) == 3
    for tile in head_tiles:
        rec = tile.record
        index, valid = spy.calls[vis.recording.psa.index(rec)]
        assert torch.equal(rec.index, index) and torch.equal(rec.valid, valid)
        want = expected_mask(index[0, tile.head], valid[0, tile.head], rec.fine_hw, tile.base.shape[0])
        assert want.any() and (~want).any()
        assert np.array_equal(tile.mask, want)
        x0, y0, x1, y1 = tile.box
        crop = png[y0:y1, x0:x1]
        assert np.array_equal(crop[~want], tile.base[~want])  # outside the regions: untouched
        assert (crop[want] != tile.base[want]).any(axis=-1).all()  # inside: every pixel highlighted
    side = json.loads(vis.path.with_suffix(".json").read_text())
    for r, entry in zip(vis.recording.psa, side["psa"]):
        assert entry["topk"] == 4
        for h, head in enumerate(entry["heads"]):
            assert head["fine_positions"] == sorted(set(r.index[0, h][r.valid[0, h]].tolist()))


def test_coarse_only_and_layer_filter(det_image, monkeypatch):
    yolo = load_model("yolo11n-pst.yaml", k=0)
    spy = SelectionSpy(monkeypatch)
    vis = render(yolo, sorted(det_image.iterdir())[1], imgsz=64, layers=[16], display=64)
    assert not spy.calls and [r.layer for r in vis.recording.psa] == [16]
    assert all(not t.mask.any() for t in vis.tiles if t.mask is not None)
    s = vis.recording.psa[0].scores
    torch.testing.assert_close(s.sum(-1), torch.ones(s.shape[:2]))  # eq. 3: mean of softmax rows sums to 1
    with pytest.raises(ValueError, match=r"--layer \[5\] is not a PST layer"):
        render(yolo, sorted(det_image.iterdir())[1], imgsz=64, layers=[5])


def test_recorder_hooks_only_while_open():
    yolo = load_model("yolo11n-pst.yaml")
    net = yolo.model
    attn = [m for m in net.modules() if isinstance(m, modules.PyramidSparseAttention)]
    with AttentionRecorder(net) as rec:
        assert all(len(a._forward_hooks) == 1 for a in attn)
        net(torch.rand(1, 3, 64, 64))
    assert len(rec.recording.psa) == 2 and sorted(rec.recording.features) == [13, 16]
    assert all(not a._forward_hooks for a in attn)


def test_classification_model(tmp_path, monkeypatch):
    from pst_yolo.data import make_classification_dataset

    cfg = tmp_path / "yolo11n-cls-pst-tiny.yaml"
    cfg.write_text(CLS_YAML)
    root = make_classification_dataset(tmp_path / "cls", n_train=1, n_val=1, imgsz=64)
    yolo = load_model(str(cfg), k=2)
    spy = SelectionSpy(monkeypatch)
    [vis] = visualize(yolo, root / "val" / "circle", tmp_path / "out", imgsz=64, k=2, display=64)
    assert vis.tiles[0].title == "top-5" and len(vis.predictions) == 3
    assert len(spy.calls) == 1 and vis.recording.psa[0].layer == 7
    png = cv2.imread(str(vis.path))
    assert png.shape == vis.canvas.shape and png.std() > 10


@pytest.mark.slow
def test_cli_writes_pngs_offline(det_image, tmp_path):
    """``pst-yolo visualize`` in a fresh interpreter with every network connection refused (no font or weight
    download)."""
    argv = ['visualize', '--model', 'yolo11n-pst.yaml', '--source', str(det_image), '--out', str(tmp_path),
            '--imgsz', '64', '--k', '2']
    guard = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "from pst_yolo.tools.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    env = {**__import__("os").environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    for p in pngs:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[1] >= 3 * 320 and img.std() > 10
    assert "network access attempted" not in r.stderr
