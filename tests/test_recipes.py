"""Training recipes (paper Table 5) as Ultralytics cfg files: found by name, exact values, and honoured by `yolo train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pst_yolo.integration as integration
from pst_yolo.compare import yolo_command

ROOT = Path(__file__).resolve().parents[1]

# Paper Table 5, transcribed (SPEC section 3). lrf = final lr / lr0; effective weight decay is checked separately.
DET_COMMON = dict(
    epochs=600, optimizer="SGD", momentum=0.937, batch=256, weight_decay=5e-4, warmup_epochs=3.0, warmup_momentum=0.8,
    warmup_bias_lr=0.0, lr0=1e-2, lrf=1e-4 / 1e-2, cos_lr=False, amp=True, box=7.5, cls=0.5, dfl=1.5, hsv_s=0.7,
    hsv_v=0.4, hsv_h=0.015, translate=0.1, mosaic=1.0, close_mosaic=10,
)
TABLE5 = {
    "pst-det-n.yaml": {**DET_COMMON, "scale": 0.5, "mixup": 0.0, "copy_paste": 0.1},
    "pst-det-s.yaml": {**DET_COMMON, "scale": 0.9, "mixup": 0.05, "copy_paste": 0.15},
    "pst-det-m.yaml": {**DET_COMMON, "scale": 0.9, "mixup": 0.15, "copy_paste": 0.4},
    "pst-cls.yaml": dict(
        epochs=200, optimizer="SGD", momentum=0.9, batch=256, weight_decay=1e-4, warmup_epochs=0.0, lr0=0.2,
        lrf=2e-3 / 0.2, cos_lr=False, amp=True, hsv_s=0.4, hsv_v=0.4, hsv_h=0.015, translate=0.1, scale=0.5,
        mixup=0.0, copy_paste=0.0, auto_augment=None, erasing=0.0,
    ),
}


def effective_weight_decay(cfg: dict, batch: int) -> float:
    """Ultralytics' rule (engine/trainer.py): accumulate = max(round(nbs / batch), 1); wd * batch * accumulate / nbs."""
    nbs = cfg.get("nbs", 64)
    accumulate = max(round(nbs / batch), 1)
    return cfg["weight_decay"] * batch * accumulate / nbs


@pytest.mark.parametrize("name", sorted(TABLE5))
def test_recipe_found_by_name_and_exact(name):
    from ultralytics.utils.checks import check_yaml

    integration.register()
    path = Path(check_yaml(name))
    assert path.parent == ROOT / "cfg" / "recipes"
    cfg = yaml.safe_load(path.read_text())
    for key, want in TABLE5[name].items():
        got = cfg.get(key)
        assert got == pytest.approx(want, rel=1e-12) if isinstance(want, float) else got == want, f"{name}: {key}"
    # every key must be a real Ultralytics argument (the stock CLI would reject the file otherwise)
    from ultralytics.cfg import DEFAULT_CFG_DICT

    assert set(cfg) <= set(DEFAULT_CFG_DICT), f"{name}: unknown keys {set(cfg) - set(DEFAULT_CFG_DICT)}"
    # Table 5's weight decay is what the optimizer gets at the table's global batch and at batches dividing 256; other
    # batches round (docs/model_zoo.md lists them)
    for batch in (256, 128, 64, 32, 16, 8):
        assert effective_weight_decay(cfg, batch) == pytest.approx(TABLE5[name]["weight_decay"]), (name, batch)
    assert effective_weight_decay(cfg, 48) != pytest.approx(TABLE5[name]["weight_decay"])


def test_cls_recipe_builds_table5_transforms(tmp_path):
    """Ultralytics' classification trainer, given cfg=pst-cls.yaml, builds Table 5's colour jitter (hsv_v -> brightness
    and contrast, hsv_s -> saturation, hsv_h -> hue) and neither RandAugment nor RandomErasing, which its own defaults
    would add (and which replace the colour jitter)."""
    import torchvision.transforms as T
    from ultralytics.cfg import get_cfg
    from ultralytics.models.yolo.classify import ClassificationTrainer
    from ultralytics.utils.checks import check_yaml

    from pst_yolo.data import make_classification_dataset

    integration.register()
    data = make_classification_dataset(tmp_path / "cls", n_train=2, n_val=1, imgsz=32)
    recipe = yaml.safe_load(Path(check_yaml("pst-cls.yaml")).read_text())

    def transforms(overrides):
        args = get_cfg(overrides={**recipe, "model": "yolo11n-cls-pst.yaml", "data": str(data), "imgsz": 32,
                                  "batch": 2, "workers": 0, "device": "cpu", "project": str(tmp_path), **overrides})
        trainer = ClassificationTrainer(overrides=vars(args))
        return trainer.build_dataset(str(data / "train"), mode="train").torch_transforms.transforms

    built = transforms({})
    jitter = [t for t in built if isinstance(t, T.ColorJitter)]
    assert len(jitter) == 1, built
    assert jitter[0].brightness == pytest.approx((0.6, 1.4)) and jitter[0].contrast == pytest.approx((0.6, 1.4))
    assert jitter[0].saturation == pytest.approx((0.6, 1.4)) and jitter[0].hue == pytest.approx((-0.015, 0.015))
    assert not any(isinstance(t, T.RandAugment) for t in built), built
    assert all(t.p == 0 for t in built if isinstance(t, T.RandomErasing)), built  # Ultralytics keeps it at p = 0
    # Ultralytics' own defaults (what a recipe without these two keys would train with): RandAugment, erasing 0.4
    stock = transforms({"auto_augment": "randaugment", "erasing": 0.4})
    assert any(isinstance(t, T.RandAugment) for t in stock)
    assert any(isinstance(t, T.RandomErasing) and t.p == 0.4 for t in stock)
    assert not any(isinstance(t, T.ColorJitter) for t in stock)


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    from pst_yolo.data import make_detection_dataset

    return make_detection_dataset(tmp_path_factory.mktemp("recipe_data"), n_train=8, n_val=4, imgsz=64)


@pytest.mark.slow
def test_yolo_cli_cfg_recipe_yields_table5_args(det_data, tmp_path):
    """The stock `yolo` command, in a fresh interpreter, takes cfg=pst-det-s.yaml by name; only epochs is overridden."""
    exe = yolo_command()[0]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        exe, "train", "model=yolo11n-pst.yaml", "cfg=pst-det-s.yaml", f"data={det_data}", "epochs=1", "imgsz=64",
        "workers=0", "device=cpu", f"project={tmp_path}", "name=run", "plots=False", "exist_ok=True",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert args["epochs"] == 1, "the explicit command-line epochs must override the recipe"
    want = {k: v for k, v in TABLE5["pst-det-s.yaml"].items() if k != "epochs"}
    for key, value in want.items():
        assert args[key] == value, f"args.yaml {key}={args[key]!r}, Table 5 says {value!r}"
    assert args["nbs"] == 256
    # the optimizer really got Table 5's weight decay (Ultralytics logs the per-group decay it built)
    assert "weight(decay=0.0005)" in log, [ln for ln in log.splitlines() if "optimizer:" in ln]
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
