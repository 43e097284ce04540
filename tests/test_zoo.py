"""Model zoo: every shipped model resolves by name, runs forward/backward, and matches the paper's parameter counts.

Models are built once per module (a cache) and shared by the tests; only one model per family (and every -cls file)
is trained for an epoch through the stock Ultralytics trainer.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

from ultralytics import YOLO  # noqa: E402

import pst_yolo.integration as integration  # noqa: E402
from pst_yolo.modules import PST  # noqa: E402
from pst_yolo.zoo import MODELS, TOLERANCE  # noqa: E402

integration.register()
ROOT = Path(__file__).resolve().parents[1]
NAMES = [m.name for m in MODELS]
BY_NAME = {m.name: m for m in MODELS}


def unified(name: str) -> str:
    """The file Ultralytics loads for ``name`` (its own rule: drop the scale letter after the version number)."""
    return re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)


def quiet_yolo(name):
    with contextlib.redirect_stdout(io.StringIO()):
        return YOLO(name, verbose=False)


@pytest.fixture(scope="module")
def zoo():
    """Build each model at most once in this module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = quiet_yolo(name)
        return cache[name]

    return get


def test_every_shipped_yaml_is_in_the_zoo_table():
    shipped = {p.name for p in (ROOT / "cfg" / "models").glob("*.yaml")}
    assert shipped == {unified(n) for n in NAMES}, "cfg/models and pst_yolo.zoo.MODELS disagree"


@pytest.mark.parametrize("name", NAMES)
def test_name_resolves_to_file_and_scale(name, zoo):
    """``YOLO('yolo11n-cls-pst.yaml')`` loads cfg/models/yolo11-cls-pst.yaml at scale n; ResNet names carry no scale."""
    entry = BY_NAME[name]
    path = integration.find_cfg(unified(name))
    assert path is not None and path.parent == ROOT / "cfg" / "models", f"{name} -> {path}"
    model = zoo(name)
    d = model.model.yaml
    assert model.task == entry.task
    letter = re.search(r"yolo\d+([nslmx])", name)
    if letter:
        assert d["scale"] == letter.group(1)
        assert letter.group(1) in d["scales"]
    else:  # ResNet: fixed size, no scale table, so Ultralytics has nothing to guess
        assert unified(name) == name, f"{name} must not be rewritten by Ultralytics' scale-stripping regex"
        assert "scales" not in d and not d.get("scale")
    psts = [m for m in model.model.modules() if isinstance(m, PST)]
    assert len(psts) == entry.n_pst


def test_every_table_1_and_3_row_and_the_s_rows_are_asserted():
    """Every paper row with a consistent count is asserted within 2%; only the N rows are reported (docs/model_zoo.md)."""
    assert TOLERANCE == 0.02
    for m in MODELS:
        if m.paper and ("Table 1" in m.paper or "Table 3" in m.paper or "-S" in m.paper or "-M" in m.paper):
            assert m.asserted or m.paper.endswith("-N"), m.name


@pytest.mark.parametrize("name", [m.name for m in MODELS if m.asserted])
def test_params_within_tolerance_of_paper(name, zoo):
    entry = BY_NAME[name]
    params = sum(p.numel() for p in zoo(name).model.parameters()) / 1e6
    rel = params / entry.params_m - 1
    assert abs(rel) <= TOLERANCE, f"{name}: {params:.2f}M vs paper {entry.params_m}M ({rel:+.1%}), {entry.paper}"


def _tensors(out):
    """All tensors in a (nested) model output."""
    if torch.is_tensor(out):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for o in items for t in _tensors(o)]


def _loss_batch(model, task, imgsz):
    """A real two-image batch in the layout the model's own loss expects."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, imgsz, imgsz, generator=g)
    if task == "classify":
        return {"img": img, "cls": torch.tensor([0, 1])}
    return {
        "img": img,
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.5]]),
    }


@pytest.mark.parametrize("name", [m.name for m in MODELS if m.task in ("detect", "classify")])
def test_forward_train_eval_two_sizes_and_one_step(name, zoo):
    """(Segmentation, pose and OBB models train through the stock CLI in tests/test_tasks.py.)"""
    from ultralytics.cfg import get_cfg

    entry = BY_NAME[name]
    net = zoo(name).model
    net.args = get_cfg()  # loss hyper-parameters, as the trainer sets them
    for imgsz in (64, 96):
        x = torch.rand(1, 3, imgsz, imgsz)
        net.train()
        train_out = _tensors(net(x))
        assert train_out and all(torch.isfinite(t).all() for t in train_out), f"{name} train output at {imgsz}"
        net.eval()
        with torch.no_grad():
            y = net(x)
        y = y[0] if isinstance(y, (list, tuple)) else y
        assert torch.isfinite(y).all(), f"{name} eval output has NaN/inf at {imgsz}"
        if entry.task == "classify":
            assert y.shape == (1, 1000)
        else:  # (B, 4 + nc, anchors) with anchors = sum over P3-P5 of (imgsz / stride)^2
            assert y.shape == (1, 84, sum((imgsz // s) ** 2 for s in (8, 16, 32)))
    net.train()
    before = [p.detach().clone() for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
    loss, _ = net.loss(_loss_batch(net, entry.task, 64))
    loss = loss.sum()
    assert torch.isfinite(loss), f"{name}: loss {loss}"
    loss.backward()
    psts = [m for m in net.modules() if isinstance(m, PST)]
    for m in psts:
        # a residual PST (C3k2PST) starts with its output BatchNorm at 0: the first step moves that BatchNorm, whose
        # weight then opens the branch to the convs before it
        first = m.cv2.bn.weight if not m.cv2.bn.weight.detach().any() else m.cv1.conv.weight
        assert first.grad is not None and first.grad.abs().sum() > 0, name
    opt.step()
    after = [p for p in net.parameters() if p.requires_grad]
    changed = sum(not torch.equal(a, b) for a, b in zip(before, after))
    assert changed > 0.5 * len(after), f"{name}: only {changed}/{len(after)} parameter tensors moved"


# One epoch through the stock trainer (training, EMA, validation in eval mode with fine attention, checkpointing).
# One ResNet per task: r50/r101-cls-pst are r18-cls-pst's blocks at other depths (every shipped model builds, runs and
# takes an AMP training step in tests/test_fakecuda.py and the forward/backward tests above).
TRAINED = [
    "yolo11n-pst.yaml",
    "yolo26n-cls-pst.yaml",
    "yolo12n-pst.yaml",
    "r18-pst.yaml",
    "yolo11n-cls-pst.yaml",
    "yolo12n-cls-pst.yaml",
    "r18-cls-pst.yaml",
]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from pst_yolo.data import make_classification_dataset, make_detection_dataset

    root = tmp_path_factory.mktemp("zoo_data")
    return {
        "detect": make_detection_dataset(root / "detect", n_train=8, n_val=4, imgsz=64),
        "classify": make_classification_dataset(root / "classify", n_train=4, n_val=2, imgsz=32),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_one_epoch_stock_trainer(name, demo_data, tmp_path):
    entry = BY_NAME[name]
    model = quiet_yolo(name)
    imgsz = 64 if entry.task == "detect" else 32
    model.train(
        data=str(demo_data[entry.task]),
        epochs=1,
        imgsz=imgsz,
        batch=4,
        workers=0,
        device="cpu",
        project=str(tmp_path),
        name="run",
        plots=False,
        verbose=False,
        exist_ok=True,
    )
    last = tmp_path / "run" / "weights" / "last.pt"
    assert last.is_file()
    metrics = model.trainer.metrics
    assert metrics and all(v == v for v in metrics.values()), f"{name}: NaN in {metrics}"
    reloaded = quiet_yolo(str(last))
    assert any(isinstance(m, PST) for m in reloaded.model.modules())
    n_out = reloaded.model.model[-1]
    assert reloaded.task == entry.task and (entry.task == "detect" or n_out.linear.out_features == 3)


def test_recommended_answers_every_family_and_task_with_a_shipped_model(zoo):
    """``pst_yolo.zoo.recommended`` names a shipped YAML for every (family, task, scale) it answers, which builds with
    the task's head and its PST layers; bad arguments are errors that name the argument."""
    from pst_yolo.zoo import RECOMMENDED, recommended

    assert recommended() == "yolo11n-pst-res.yaml"  # the default: YOLO11 detection at scale n
    assert recommended(family="yolo26") == "yolo26n-pst-res.yaml"
    assert recommended(family="yolo12") == "yolo12n-pst.yaml"  # no measured alternative to the paper's layout
    for family, task in RECOMMENDED:
        for scale in "nsmlx":
            try:
                name = recommended(task, scale, family)
            except ValueError as e:
                assert "scale must be one of" in str(e) and scale in "lx"  # -cls and yolo12 detect ship n, s, m
                continue
            assert name in BY_NAME or scale != "n", name
            if scale == "n":
                model = zoo(name)
                assert model.task == task and any(isinstance(m, PST) for m in model.model.modules()), name
    for bad, what in ((dict(family="yolo8"), "family"), (dict(task="depth"), "task"), (dict(scale="q"), "scale")):
        with pytest.raises(ValueError, match=what):
            recommended(**bad)


@pytest.mark.parametrize("family", ["yolo11", "yolo26"])
def test_recommended_model_starts_as_the_stock_model_it_extends(family):
    """The residual-PST model loaded from a stock checkpoint (Ultralytics' own transfer, as pretrained= does) computes
    exactly what the stock model computes: every stock tensor transfers and the PST branch starts at zero. A training
    step then moves the PST branch (it gets gradients through its zero-initialised output BatchNorm)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from pst_yolo.modules import C3k2PST

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        stock = DetectionModel(f"{family}n.yaml", nc=3, verbose=False)
        res = DetectionModel(f"{family}n-pst-res.yaml", nc=3, verbose=False)
    for m in stock.modules():  # non-trivial BatchNorm statistics: every transferred tensor matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    res.load(stock, verbose=False)
    stock_keys = set(stock.state_dict())
    assert stock_keys <= set(res.state_dict())  # same names: C3k2PST keeps the stock C3k2's
    assert all(torch.equal(res.state_dict()[k], v) for k, v in stock.state_dict().items())
    x = torch.rand(2, 3, 96, 96)
    stock.eval(), res.eval()
    with torch.no_grad():
        want, got = stock(x), res(x)
    want, got = (w[0] if isinstance(w, (list, tuple)) else w for w in (want, got))
    assert torch.equal(got, want)
    res.train()
    res.args = get_cfg()
    loss, _ = res.loss(_loss_batch(res, "detect", 64))
    loss.sum().backward()
    pst = next(m for m in res.modules() if isinstance(m, C3k2PST)).pst
    assert pst.cv2.bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["yolo11n-pst-res.yaml", "yolo26n-pst-res.yaml", "yolo11n-seg-pst-res.yaml"])
def test_recommended_model_draws_the_stock_models_initialisation_at_the_same_seed(name):
    """Built at the same seed, a residual-PST model's stock tensors are the stock model's, bit for bit, with the class
    count of a new data set too (the head convs ``pretrained=`` re-draws on the fine-tuning path): its branch draws from
    a stream of its own, so adding it re-draws nothing (PST against stock is paired by construction). The branch's own
    weights still depend on the seed."""
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    from pst_yolo.control import control_base
    from pst_yolo.modules import C3k2PST

    cls = SegmentationModel if "-seg" in name else DetectionModel
    branch = {}
    for seed, nc in ((0, 5), (1, 5), (0, 80)):
        with contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(seed)
            stock = cls(control_base(name), nc=nc, verbose=False).state_dict()
            torch.manual_seed(seed)
            res = cls(name, nc=nc, verbose=False)
        state = res.state_dict()
        assert set(stock) <= set(state)
        different = [k for k, v in stock.items() if not torch.equal(state[k], v)]
        assert not different, f"{name} seed {seed} nc {nc}: {different[:5]}"
        branch[seed, nc] = next(m for m in res.modules() if isinstance(m, C3k2PST)).pst.cv1.conv.weight.clone()
    assert not torch.equal(branch[0, 5], branch[1, 5])  # the branch's stream follows the seed
    assert torch.equal(branch[0, 5], branch[0, 80])  # and nothing after it


def test_c3k2pst_residual_init_from_yaml_and_bad_values_name_the_layer():
    """``residual_init`` in a C3k2PST row's dict sets the starting weight of the residual PST's output BatchNorm (the
    study's "alive branch" probe); the other keys of the dict stay PST args; bad values are errors naming the row."""
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    from pst_yolo.modules import C3k2PST

    d = yaml.safe_load((ROOT / "cfg" / "models" / "yolo11-pst-res.yaml").read_text())
    d["scale"] = "n"
    row = d["head"][2]
    assert row[2] == "C3k2PST"
    row[3] = [512, False, 0.5, {"residual_init": 0.3, "k": 4}]
    with contextlib.redirect_stdout(io.StringIO()):
        net = DetectionModel(d, nc=3, verbose=False)
    block = next(m for m in net.modules() if isinstance(m, C3k2PST))
    assert torch.allclose(block.pst.cv2.bn.weight, torch.full_like(block.pst.cv2.bn.weight, 0.3))
    assert block.pst.m[0].attn.topk == 4
    for bad in (-0.1, "0.3", True):
        row[3] = [512, False, 0.5, {"residual_init": bad}]
        with pytest.raises(ValueError, match=r"C3k2PST layer 13: residual_init must be a number >= 0"):
            DetectionModel(d, nc=3, verbose=False)
    with pytest.raises(ValueError, match=r"C3k2PST: residual_init must be a number >= 0"):
        C3k2PST(64, 64, 64, residual_init=-1)
