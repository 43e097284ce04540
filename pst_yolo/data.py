"""Built-in demo data, generated locally and deterministically (no downloads).

Detection: coloured shapes (circle, square, triangle) of widely varying size on textured backgrounds, so objects land
on all three detection scales (P3/P4/P5). Classification: one centred shape per image, same three classes.

Usage:
    python -m pst_yolo.data --out demo_data          # writes demo_data/detect/data.yaml and demo_data/classify/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle")
VERSION = 1  # bump when the generator's output changes, so cached copies are rebuilt


def _background(rng, size):
    """Smooth random colour gradient plus noise: enough texture that the task is not trivial."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1, c2 = (rng.uniform(40, 200, 3) for _ in range(3))
    img = c0 + np.multiply.outer(xx, c1 - c0) * 0.5 + np.multiply.outer(yy, c2 - c0) * 0.5
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(img, cls, cx, cy, r, color):
    """Draw one shape; returns its tight box (x1, y1, x2, y2) in pixels."""
    import cv2

    if cls == 0:
        cv2.circle(img, (cx, cy), r, color, -1, lineType=cv2.LINE_AA)
        return cx - r, cy - r, cx + r, cy + r
    if cls == 1:
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        return cx - r, cy - r, cx + r, cy + r
    pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
    cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA)
    return cx - r, cy - r, cx + r, cy + r


def _detection_image(rng, size):
    img = _background(rng, size)
    labels = []
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(len(CLASSES)))
        # log-uniform radius: small (P3), medium (P4) and large (P5) objects in every split
        r = int(np.exp(rng.uniform(np.log(size * 0.04), np.log(size * 0.3))))
        cx, cy = (int(rng.integers(r, size - r)) for _ in range(2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x1, y1, x2, y2 = (np.clip(v, 0, size - 1) for v in _draw(img, cls, cx, cy, r, color))
        labels.append((cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size))
    return img, labels


def _stamp(params: dict) -> str:
    return json.dumps({"version": VERSION, **params}, sort_keys=True)


def _is_cached(root: Path, params: dict) -> bool:
    """True if ``root`` holds a complete dataset made with the same parameters (the stamp is written last)."""
    stamp = root / "pst_demo.json"
    return stamp.is_file() and stamp.read_text() == _stamp(params)


def make_detection_dataset(root, n_train=64, n_val=16, imgsz=160, seed=0) -> Path:
    """Write a YOLO-format detection dataset under ``root`` and return its data YAML path.

    Args:
        root (str | Path): Output folder (created).
        n_train (int): Training images.
        n_val (int): Validation images.
        imgsz (int): Square image size in pixels.
        seed (int): RNG seed; the same arguments always give byte-identical files.

    Returns:
        (Path): ``root/data.yaml`` with absolute ``path`` so it works from any working directory.
    """
    import cv2

    root = Path(root).resolve()
    params = dict(kind="detect", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    yaml_path = root / "data.yaml"
    if _is_cached(root, params):
        return yaml_path
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = _detection_image(rng, imgsz)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), img)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    yaml_path.write_text(f"# pst-yolo demo detection data (generated)\npath: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    (root / "pst_demo.json").write_text(_stamp(params))
    return yaml_path


def make_classification_dataset(root, n_train=30, n_val=10, imgsz=64, seed=0) -> Path:
    """Write an ImageFolder classification dataset (``root/{train,val}/<class>/*.png``) and return ``root``.

    Args:
        root (str | Path): Output folder (created).
        n_train (int): Training images per class.
        n_val (int): Validation images per class.
        imgsz (int): Square image size in pixels.
        seed (int): RNG seed.
    """
    import cv2

    root = Path(root).resolve()
    params = dict(kind="classify", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    if _is_cached(root, params):
        return root
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _background(rng, imgsz)
                r = int(rng.uniform(0.2, 0.4) * imgsz)
                c = imgsz // 2 + int(rng.integers(-imgsz // 8, imgsz // 8 + 1))
                _draw(img, cls, c, c, r, tuple(int(v) for v in rng.integers(0, 256, 3)))
                cv2.imwrite(str(d / f"{i:05d}.png"), img)
    (root / "pst_demo.json").write_text(_stamp(params))
    return root


def make_demo_data(out="demo_data", seed=0) -> dict:
    """Both demo datasets under ``out``; returns ``{"detect": data.yaml, "classify": folder}``."""
    out = Path(out)
    return {
        "detect": make_detection_dataset(out / "detect", seed=seed),
        "classify": make_classification_dataset(out / "classify", seed=seed),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for kind, path in make_demo_data(args.out, args.seed).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
