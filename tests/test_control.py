"""Init-matched controls (pst_yolo.control, `pst-yolo compare --control`): the control starts from the PST model's own
initialisation in every tensor the two networks share, computes the stock function, and the stock `yolo train` of
the PST model really starts from the weights the control is given."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import ultralytics.nn.tasks  # noqa: F401  (Ultralytics first: start-up hook order)

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402

from pst_yolo.compare import compare, has_pst, paired_table, yolo_command  # noqa: E402
from pst_yolo.control import control_base, initial_weights, shared_tensors  # noqa: E402
from pst_yolo.data import make_detection_dataset  # noqa: E402

SETTINGS = {"epochs": 1, "imgsz": 64, "batch": 2, "device": "cpu", "close_mosaic": "1"}  # a string, as typed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_detection_dataset(tmp_path_factory.mktemp("control") / "data", n_train=4, n_val=2, imgsz=64)


def test_control_base_names():
    assert control_base("yolo11n-pst-res.yaml") == "yolo11n.yaml"
    assert control_base("yolo11n-pst.yaml") == "yolo11n.yaml"
    assert control_base("docs/accuracy/models/yolo11n-pst-res2.yaml") == "yolo11n.yaml"
    assert control_base("yolo26n-seg-pst-res.yaml") == "yolo26n-seg.yaml"
    with pytest.raises(ValueError, match="named <stock>-pst"):
        control_base("yolo11n.yaml")
    with pytest.raises(ValueError, match="ResNet"):
        control_base("r18-pst.yaml")


def _trainer_model(model, data, seed, tmp, **extra):
    from ultralytics.cfg import smart_value

    typed = {k: smart_value(v) if isinstance(v, str) else v for k, v in SETTINGS.items()}  # as `yolo train` types them
    trainer = YOLO(model)._smart_load("trainer")(overrides={
        **typed, "model": model, "data": str(data), "seed": seed, "deterministic": True, "workers": 0,
        "plots": False, "project": str(tmp), "name": Path(model).stem, "exist_ok": True, **extra})
    trainer.setup_model()
    return trainer.model


@pytest.mark.parametrize("pst", ["yolo11n-pst-res.yaml", "yolo11n-pst.yaml"])
def test_control_starts_from_the_pst_models_initialisation(data, tmp_path, pst):
    # (that the same seed gives the same weights is implied by the stronger subprocess test below: the saved weights
    # are the ones a separate `yolo train` process starts from)
    init = initial_weights(pst, data, 3, SETTINGS, tmp_path / "init.pt")
    pst_model = torch.load(init, weights_only=False)["model"]
    other = initial_weights(pst, data, 4, SETTINGS, tmp_path / "other.pt")
    ref = pst_model.state_dict()
    assert not torch.equal(ref["model.0.conv.weight"], torch.load(other, weights_only=False)["model"].state_dict()[
        "model.0.conv.weight"]), "another seed must give another initialisation"

    control = _trainer_model(control_base(pst), data, 3, tmp_path / "c", pretrained=str(init))
    assert not has_pst(control), "the control is the stock network"
    state = control.state_dict()
    shared = shared_tensors(state, ref)
    assert all(torch.equal(state[k], ref[k]) for k in shared)
    not_shared = sorted({k.split(".")[1] for k in state if k not in shared})
    stock = _trainer_model(control_base(pst), data, 3, tmp_path / "s").state_dict()
    if pst.endswith("-res.yaml"):
        assert not_shared == []  # the residual model holds the whole stock network under its names
        # at initialisation the residual branch is 0: the PST model computes exactly its control's (stock) function
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(control.eval()(x)[0], pst_model.float().eval()(x)[0], rtol=0, atol=0)
    else:
        assert not_shared == ["13", "16"]  # the two rows the paper's PST replaces
        # those layers are the stock model's own seeded initialisation
        assert all(torch.equal(state[k], stock[k]) for k in state if k.split(".")[1] in ("13", "16"))
    after = [k for k in shared if k.split(".")[1] in ("17", "19")]
    if pst.endswith("-res.yaml"):  # the branch draws from its own stream: the whole control is the stock model's
        assert all(torch.equal(state[k], stock[k]) for k in state)
    else:
        assert not all(torch.equal(state[k], stock[k]) for k in after), \
            "layers built after the PST must carry the PST model's initialisation, not stock's"


@pytest.mark.slow
def test_stock_yolo_train_starts_from_the_saved_initial_weights(data, tmp_path):
    """One epoch of `yolo train` at learning rate 0: its parameters (BatchNorm statistics aside) are the weights
    ``initial_weights`` saved for the control (to float16, the checkpoint's precision), so the control's start is the
    PST arm's real start."""
    pst = "yolo11n-pst-res.yaml"
    init = torch.load(initial_weights(pst, data, 5, SETTINGS, tmp_path / "init.pt"), weights_only=False)["model"]
    args = {**SETTINGS, "model": pst, "data": str(data), "seed": 5, "deterministic": True, "workers": 0, "plots": False,
            "optimizer": "SGD", "lr0": 0.0, "warmup_bias_lr": 0.0, "project": str(tmp_path), "name": "run", "exist_ok": True, "amp": False}
    p = subprocess.run([*yolo_command(), "train", *(f"{k}={v}" for k, v in args.items())], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    trained = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=False)["model"].float()
    params = dict(trained.named_parameters())
    for name, value in init.named_parameters():  # checkpoints hold float16 weights
        torch.testing.assert_close(params[name], value.half().float(), rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_compare_on_the_fine_tuning_path_with_control_prints_the_paired_table(data, tmp_path):
    """``pretrain=<data>``: one stock checkpoint trained once, every arm ``pretrained=`` it; the control starts from
    the fine-tuned PST model's real start (the stock checkpoint's tensors plus what the PST model draws anew)."""
    source = make_detection_dataset(tmp_path / "source", n_train=4, n_val=2, imgsz=64, seed=7)
    result = compare(["yolo11n.yaml", "yolo11n-pst-res.yaml"], data, epochs=1, imgsz=64, batch=2, seeds=[0, 1],
                     ks=[0], out=tmp_path / "cmp", control=True, pretrain=source, pretrain_epochs=1)
    assert result["models"] == ["yolo11n", "yolo11n-pst-res", "yolo11n-pst-res-control"]
    assert result["baseline"] == "yolo11n"
    assert len(result["runs"]) == 6
    start = tmp_path / "cmp" / "pretrain" / "yolo11n-source" / "weights" / "last.pt"
    assert result["settings"]["pretrained"] == str(start) and start.is_file()
    controls = [r for r in result["runs"] if r["label"].endswith("-control")]
    assert all(r["extra"]["pretrained"].endswith(f"yolo11n-pst-res-control-s{r['seed']}.pt") for r in controls)
    stock = torch.load(start, weights_only=False)["model"].float().state_dict()
    for r in controls:  # every stock tensor of the start is in the control's initial weights (BN statistics too)
        init = torch.load(r["extra"]["pretrained"], weights_only=False)["model"].float().state_dict()
        for name in shared_tensors(stock, init):
            torch.testing.assert_close(init[name], stock[name], rtol=0, atol=0, msg=name)
        assert len(shared_tensors(stock, init)) == len(stock)
    table = paired_table(result)
    assert "| yolo11n-pst-res | off (k=0) | 0 |" in table and "| yolo11n-pst-res | off (k=0) | 1 |" in table
    assert "seeds for a 2% effect" in table and "PST / control" in table and "worst" in table
    assert table in (tmp_path / "cmp" / "table.md").read_text()
    assert "pretrain=" in (tmp_path / "cmp" / "table.md").read_text()
