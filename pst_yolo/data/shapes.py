"""The demo shapes: coloured circles, squares and triangles on textured backgrounds, for every Ultralytics task.

Detection: shapes of widely varying size (log-uniform radius), so objects land on all three detection scales
(P3/P4/P5). Classification: one centred shape per image. Segmentation: the same shapes, placed without overlap, with
their outlines as polygons. Pose: rotated squares with their four corners as keypoints (top-left, top-right,
bottom-right, bottom-left of the square's own frame; rotations stay within +-40 degrees so that order is
unambiguous, and a horizontal flip swaps 0<->1 and 2<->3). OBB: rotated rectangles and ellipses with their oriented
boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pst_yolo.data.writer import box_line, is_cached, points_line, stamp, write_yolo

CLASSES = ("circle", "square", "triangle")
OBB_CLASSES = ("rectangle", "ellipse")
POSE_KPTS = 4  # corners of a square
POSE_FLIP = (1, 0, 3, 2)


def background(rng, size):
    """Smooth random colour gradient plus noise: enough texture that the task is not trivial."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1, c2 = (rng.uniform(40, 200, 3) for _ in range(3))
    img = c0 + np.multiply.outer(xx, c1 - c0) * 0.5 + np.multiply.outer(yy, c2 - c0) * 0.5
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _color(rng):
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def outline(cls, cx, cy, r) -> np.ndarray:
    """Polygon (N, 2) of shape ``cls`` centred at (cx, cy) with radius r, in pixels."""
    if cls == 0:
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
    if cls == 1:
        return np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]], np.float64)
    return np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.float64)


def draw(img, cls, cx, cy, r, color):
    """Draw one shape; returns its tight box (x1, y1, x2, y2) in pixels."""
    import cv2

    if cls == 0:
        cv2.circle(img, (cx, cy), r, color, -1, lineType=cv2.LINE_AA)
    elif cls == 1:
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        cv2.fillPoly(img, [outline(cls, cx, cy, r).astype(np.int32)], color, lineType=cv2.LINE_AA)
    return cx - r, cy - r, cx + r, cy + r


def _radius(rng, size, lo=0.04, hi=0.3):
    """Log-uniform radius: small (P3), medium (P4) and large (P5) objects in every split."""
    return int(np.exp(rng.uniform(np.log(size * lo), np.log(size * hi))))


def detection_image(rng, size):
    img = background(rng, size)
    labels = []
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(len(CLASSES)))
        r = _radius(rng, size)
        cx, cy = (int(rng.integers(r, size - r)) for _ in range(2))
        x1, y1, x2, y2 = (np.clip(v, 0, size - 1) for v in draw(img, cls, cx, cy, r, _color(rng)))
        labels.append(box_line(cls, x1, y1, x2, y2, size))
    return img, labels


def _place(rng, size, placed, r, margin=2, tries=20):
    """A centre for a circle of radius r that overlaps none of ``placed`` (cx, cy, r), or None."""
    for _ in range(tries):
        cx, cy = (int(rng.integers(r, size - r)) for _ in range(2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + margin) ** 2 for x, y, q in placed):
            return cx, cy
    return None


def segmentation_image(rng, size):
    img = background(rng, size)
    labels, placed = [], []
    for _ in range(rng.integers(1, 5)):
        cls, r = int(rng.integers(len(CLASSES))), _radius(rng, size, 0.06, 0.3)
        at = _place(rng, size, placed, int(r * 1.5))  # a triangle's corners reach r * sqrt(2) from its centre
        if at is None:
            continue
        placed.append((*at, int(r * 1.5)))
        draw(img, cls, *at, r, _color(rng))
        labels.append(points_line(cls, outline(cls, *at, r), size))
    return img, labels


def _rotated(points, cx, cy, angle):
    c, s = np.cos(angle), np.sin(angle)
    p = np.asarray(points, np.float64)
    return np.stack([cx + c * p[:, 0] - s * p[:, 1], cy + s * p[:, 0] + c * p[:, 1]], 1)


def pose_image(rng, size):
    import cv2

    img = background(rng, size)
    labels, placed = [], []
    for _ in range(rng.integers(1, 4)):
        r = _radius(rng, size, 0.08, 0.3)
        at = _place(rng, size, placed, int(r * 1.45))
        if at is None:
            continue
        placed.append((*at, int(r * 1.45)))
        corners = _rotated([[-r, -r], [r, -r], [r, r], [-r, r]], *at, np.deg2rad(rng.uniform(-40, 40)))
        cv2.fillPoly(img, [np.round(corners).astype(np.int32)], _color(rng), lineType=cv2.LINE_AA)
        x1, y1 = np.clip(corners.min(0), 0, size - 1)
        x2, y2 = np.clip(corners.max(0), 0, size - 1)
        kpts = " ".join(f"{x / size:.6f} {y / size:.6f} 2" for x, y in np.clip(corners, 0, size - 1))
        labels.append(f"{box_line(0, x1, y1, x2, y2, size)} {kpts}")
    return img, labels


def obb_image(rng, size):
    import cv2

    img = background(rng, size)
    labels, placed = [], []
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(len(OBB_CLASSES)))
        a = _radius(rng, size, 0.06, 0.3)  # half length
        b = max(2, int(a * rng.uniform(0.3, 0.7)))  # half width: elongated, so the angle is visible
        at = _place(rng, size, placed, a)
        if at is None:
            continue
        placed.append((*at, a))
        angle = rng.uniform(0, np.pi)
        corners = _rotated([[-a, -b], [a, -b], [a, b], [-a, b]], *at, angle)
        if cls == 0:
            cv2.fillPoly(img, [np.round(corners).astype(np.int32)], _color(rng), lineType=cv2.LINE_AA)
        else:
            cv2.ellipse(img, at, (a, b), float(np.rad2deg(angle)), 0, 360, _color(rng), -1, lineType=cv2.LINE_AA)
        labels.append(points_line(cls, corners, size))
    return img, labels


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
    params = dict(kind="detect", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, CLASSES, detection_image, n_train, n_val, imgsz, seed, "pst-yolo demo detection data")


def make_segmentation_dataset(root, n_train=64, n_val=16, imgsz=160, seed=0) -> Path:
    """The demo shapes with polygon labels (``yolo segment``); arguments and return as :func:`make_detection_dataset`."""
    params = dict(kind="segment", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, CLASSES, segmentation_image, n_train, n_val, imgsz, seed,
                      "pst-yolo demo segmentation data")


def make_pose_dataset(root, n_train=64, n_val=16, imgsz=160, seed=0) -> Path:
    """Rotated squares with their 4 corners as keypoints (``yolo pose``); as :func:`make_detection_dataset`."""
    params = dict(kind="pose", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    extra = f"kpt_shape: [{POSE_KPTS}, 3]\nflip_idx: {list(POSE_FLIP)}\n"
    return write_yolo(root, params, ["square"], pose_image, n_train, n_val, imgsz, seed, "pst-yolo demo pose data",
                      extra)


def make_obb_dataset(root, n_train=64, n_val=16, imgsz=160, seed=0) -> Path:
    """Rotated rectangles and ellipses with oriented boxes (``yolo obb``); as :func:`make_detection_dataset`."""
    params = dict(kind="obb", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, OBB_CLASSES, obb_image, n_train, n_val, imgsz, seed, "pst-yolo demo OBB data")


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
    if is_cached(root, params):
        return root
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = background(rng, imgsz)
                r = int(rng.uniform(0.2, 0.4) * imgsz)
                c = imgsz // 2 + int(rng.integers(-imgsz // 8, imgsz // 8 + 1))
                draw(img, cls, c, c, r, _color(rng))
                cv2.imwrite(str(d / f"{i:05d}.png"), img)
    (root / "pst_demo.json").write_text(stamp(params))
    return root
