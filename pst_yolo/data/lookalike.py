"""The look-alike detection set: many classes that differ in small details, so telling them apart is the hard part.

Ten characters that are easy to find and hard to name, in three groups of look-alikes (round: ``0 O Q D C G``; the
two-bowled: ``8 B 3``; and ``S``), drawn in OpenCV's two upright sans-serif Hershey fonts (no font files), 2-4 per
image at 25-40% of the image height, tilted up to 10 degrees, on the clutter set's gratings and noise without its
distractor strokes or occluders (``pst_yolo.data.clutter``). Finding an object is easy
here and naming it is not: a model's classification loss, not its box loss, decides its mAP (the fourth set of
docs/accuracy.md).
"""

from __future__ import annotations

from pathlib import Path

from pst_yolo.data.clutter import glyph_scene
from pst_yolo.data.writer import write_yolo

CHARACTERS = ("0", "O", "Q", "D", "C", "G", "8", "B", "3", "S")


def _fonts():
    import cv2

    return cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX


def _lookalike_image(rng, size):
    return glyph_scene(rng, size, CHARACTERS, count=(2, 5), occluders=False, strokes=False, fonts=_fonts(),
                       height=(0.25, 0.40), thickness=(2.0, 3.5), max_angle=10.0)


def make_lookalike_dataset(root, n_train=600, n_val=300, imgsz=160, seed=0) -> Path:
    """Write the look-alike detection data set (10 classes of confusable characters); returns its data YAML.

    Args: as :func:`pst_yolo.data.make_detection_dataset`.
    """
    params = dict(kind="lookalike", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, [f"char_{c}" for c in CHARACTERS], _lookalike_image, n_train, n_val, imgsz, seed,
                      "pst-yolo look-alike detection data (10 classes of confusable characters)")
