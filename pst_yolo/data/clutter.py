"""The clutter detection set, a second data set unlike the demo shapes: glyphs "0"-"4" in OpenCV's built-in Hershey
fonts (no font files), rotated and scaled, on gratings and noise with unlabelled distractor strokes, partly hidden by
occluders (a glyph less than half visible is not labelled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pst_yolo.data.writer import box_line, write_yolo

GLYPHS = ("0", "1", "2", "3", "4")


def _clutter_background(rng, size):
    """Oriented gratings, blurred noise and unlabelled strokes: texture and clutter at every scale."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), np.float32)
    for _ in range(3):
        f, a = rng.uniform(0.02, 0.25), rng.uniform(0, np.pi)
        wave = np.sin(f * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 2 * np.pi))
        img += np.multiply.outer(wave, rng.uniform(-40, 40, 3))
    noise = cv2.GaussianBlur(rng.normal(0, 40, (size, size, 3)).astype(np.float32), (0, 0), rng.uniform(1, 4))
    img += 128 + noise
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 7)):  # distractor strokes and arcs, never labelled
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        p1, p2 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        if rng.random() < 0.5:
            cv2.line(img, p1, p2, color, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(3, size // 4, 2))
            cv2.ellipse(img, p1, axes, float(rng.uniform(0, 360)), 0, float(rng.uniform(90, 300)), color,
                        int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    return img


def _glyph_mask(rng, cls, size):
    """A rotated, scaled glyph of class ``cls`` as a uint8 mask of its own (h, w) patch."""
    import cv2

    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
             cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX)
    font = fonts[int(rng.integers(len(fonts)))]
    height = float(np.exp(rng.uniform(np.log(size * 0.12), np.log(size * 0.5))))
    scale = height / 22.0  # Hershey glyphs are about 22 px tall at scale 1
    thick = max(2, int(round(scale * rng.uniform(2.0, 4.0))))
    (w, h), base = cv2.getTextSize(GLYPHS[cls], font, scale, thick)
    pad = thick + 2
    patch = np.zeros((h + base + 2 * pad, w + 2 * pad), np.uint8)
    cv2.putText(patch, GLYPHS[cls], (pad, pad + h), font, scale, 255, thick, cv2.LINE_AA)
    angle = float(rng.uniform(-30, 30))
    ph, pw = patch.shape
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(ph * sin + pw * cos) + 1, int(ph * cos + pw * sin) + 1
    m[0, 2] += nw / 2 - pw / 2
    m[1, 2] += nh / 2 - ph / 2
    return cv2.warpAffine(patch, m, (nw, nh))


def _clutter_image(rng, size):
    """One clutter image and its labels; glyphs less than half visible after occlusion are dropped."""
    import cv2

    img = _clutter_background(rng, size)
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows
    objects = []
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(len(GLYPHS)))
        mask = _glyph_mask(rng, cls, size)
        mh, mw = mask.shape
        if mh >= size or mw >= size:
            continue
        y0, x0 = int(rng.integers(0, size - mh)), int(rng.integers(0, size - mw))
        on = mask > 127
        color = rng.integers(0, 256, 3).astype(np.float32)
        region = img[y0 : y0 + mh, x0 : x0 + mw].astype(np.float32)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        img[y0 : y0 + mh, x0 : x0 + mw] = (region * (1 - alpha) + color * alpha).astype(np.uint8)
        owner[y0 : y0 + mh, x0 : x0 + mw][on] = len(objects)
        objects.append((cls, int(on.sum())))
    for _ in range(rng.integers(0, 3)):  # occluders: filled blobs that hide parts of the glyphs
        r = int(rng.integers(size // 16, size // 6))
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        blob = np.zeros((size, size), np.uint8)
        cv2.ellipse(blob, c, (r, int(r * rng.uniform(0.4, 1.0))), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        img[blob > 0] = color
        owner[blob > 0] = -1
    labels = []
    for i, (cls, total) in enumerate(objects):
        ys, xs = np.nonzero(owner == i)
        if total == 0 or len(xs) < 0.5 * total:
            continue
        labels.append(box_line(cls, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, size))
    return img, labels



def make_clutter_dataset(root, n_train=500, n_val=100, imgsz=160, seed=0) -> Path:
    """Write the clutter detection dataset (glyphs on textured, cluttered, occluded scenes); returns its data YAML.

    Args: as :func:`pst_yolo.data.make_detection_dataset`.
    """
    params = dict(kind="clutter", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, [f"glyph{g}" for g in GLYPHS], _clutter_image, n_train, n_val, imgsz, seed,
                      "pst-yolo clutter detection data")
