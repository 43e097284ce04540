"""Writing generated datasets in the formats Ultralytics reads: YOLO image/label folders with a data YAML, or
ImageFolder for classification; cached by a stamp of the generator's parameters (written last)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VERSION = 2  # bump when a generator's output changes, so cached copies are rebuilt


def stamp(params: dict) -> str:
    return json.dumps({"version": VERSION, **params}, sort_keys=True)


def is_cached(root: Path, params: dict) -> bool:
    """True if ``root`` holds a complete dataset made with the same parameters (the stamp is written last)."""
    path = root / "pst_demo.json"
    return path.is_file() and path.read_text() == stamp(params)


def box_line(cls: int, x1, y1, x2, y2, size: int) -> str:
    """YOLO detection label ``cls xc yc w h``, normalised, from a pixel box."""
    return f"{cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"


def points_line(cls: int, points, size: int) -> str:
    """YOLO segmentation / OBB label ``cls x1 y1 x2 y2 ...``, normalised, from pixel points (N, 2)."""
    pts = np.clip(np.asarray(points, np.float64) / size, 0.0, 1.0).reshape(-1)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in pts)


def write_yolo(root, params: dict, names, make_image, n_train: int, n_val: int, imgsz: int, seed: int, title: str,
               extra_yaml: str = "") -> Path:
    """Generate and write a YOLO-format dataset under ``root``; returns its data YAML (absolute ``path``).

    ``make_image(rng, imgsz)`` returns ``(image BGR uint8, [label lines])``; ``extra_yaml`` adds keys such as the
    keypoint shape of a pose dataset.
    """
    import cv2

    root = Path(root).resolve()
    yaml_path = root / "data.yaml"
    if is_cached(root, params):
        return yaml_path
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lines = make_image(rng, imgsz)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), img)
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    listed = "\n".join(f"  {i}: {n}" for i, n in enumerate(names))
    yaml_path.write_text(f"# {title} (generated)\npath: {root}\ntrain: images/train\nval: images/val\n{extra_yaml}"
                         f"names:\n{listed}\n")
    (root / "pst_demo.json").write_text(stamp(params))
    return yaml_path
