"""The clutter detection set, a second data set unlike the demo shapes: glyphs "0"-"4" in OpenCV's built-in Hershey
fonts (no font files), rotated and scaled, on gratings and noise with unlabelled distractor strokes, partly hidden by
occluders (a glyph less than half visible is not labelled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pst_yolo.data.writer import box_line, write_yolo

GLYPHS = ("0", "1", "2", "3", "4")


def clutter_background(rng, size, strokes=True):
    """Oriented gratings, blurred noise and (``strokes``) unlabelled strokes: texture and clutter at every scale."""
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
    for _ in range(rng.integers(2, 7) if strokes else 0):  # distractor strokes and arcs, never labelled
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        p1, p2 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        if rng.random() < 0.5:
            cv2.line(img, p1, p2, color, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(3, size // 4, 2))
            cv2.ellipse(img, p1, axes, float(rng.uniform(0, 360)), 0, float(rng.uniform(90, 300)), color,
                        int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    return img


def glyph_mask(rng, text, size, fonts=None, height=(0.12, 0.5), thickness=(2.0, 4.0), max_angle=30.0):
    """``text`` in a random Hershey font (OpenCV's built-in vector fonts: no font files), rotated and scaled, as a uint8
    mask of its own (h, w) patch; ``height`` is the glyph height range as fractions of ``size`` (log-uniform)."""
    import cv2

    fonts = fonts or (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
                      cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX)
    font = fonts[int(rng.integers(len(fonts)))]
    height = float(np.exp(rng.uniform(np.log(size * height[0]), np.log(size * height[1]))))
    scale = height / 22.0  # Hershey glyphs are about 22 px tall at scale 1
    thick = max(2, int(round(scale * rng.uniform(*thickness))))
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    pad = thick + 2
    patch = np.zeros((h + base + 2 * pad, w + 2 * pad), np.uint8)
    cv2.putText(patch, text, (pad, pad + h), font, scale, 255, thick, cv2.LINE_AA)
    angle = float(rng.uniform(-max_angle, max_angle))
    ph, pw = patch.shape
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(ph * sin + pw * cos) + 1, int(ph * cos + pw * sin) + 1
    m[0, 2] += nw / 2 - pw / 2
    m[1, 2] += nh / 2 - ph / 2
    return cv2.warpAffine(patch, m, (nw, nh))


def glyph_scene(rng, size, texts, count=(1, 5), occluders=True, strokes=True, **glyph):
    """One image of glyphs (class i draws ``texts[i]``) on a clutter background (with distractor ``strokes``), with
    its labels; ``count`` is the [low, high) number of glyphs, ``glyph`` goes to :func:`glyph_mask`. Occluders (filled
    blobs) hide parts of the glyphs; a glyph less than half visible is not labelled."""
    import cv2

    img = clutter_background(rng, size, strokes)
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows
    objects = []
    for _ in range(rng.integers(*count)):
        cls = int(rng.integers(len(texts)))
        mask = glyph_mask(rng, texts[cls], size, **glyph)
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
    for _ in range(rng.integers(0, 3) if occluders else 0):
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


def _clutter_image(rng, size):
    return glyph_scene(rng, size, GLYPHS)


def make_clutter_dataset(root, n_train=500, n_val=100, imgsz=160, seed=0) -> Path:
    """Write the clutter detection dataset (glyphs on textured, cluttered, occluded scenes); returns its data YAML.

    Args: as :func:`pst_yolo.data.make_detection_dataset`.
    """
    params = dict(kind="clutter", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, [f"glyph{g}" for g in GLYPHS], _clutter_image, n_train, n_val, imgsz, seed,
                      "pst-yolo clutter detection data")
