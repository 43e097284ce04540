"""The look-alike detection set: many classes that differ in small details, so telling them apart is the hard part.

Sixteen characters that are easy to find and hard to name, in four groups of look-alikes (round: ``0 O Q D C G``; the
two-bowled: ``8 B 3``; the barred: ``E F P R``; the S-curves: ``5 S 6``), drawn in OpenCV's four upright Hershey
fonts (no font files), 2-6 per image at 12-35% of the image height, tilted up to 15 degrees, on the clutter set's
backgrounds without occluders (``pst_yolo.data.clutter``). Finding an object is easy here and naming it is not: a
model's classification loss, not its box loss, decides its mAP (the fourth set of docs/accuracy.md).
"""

from __future__ import annotations

from pathlib import Path

from pst_yolo.data.clutter import glyph_scene
from pst_yolo.data.writer import write_yolo

CHARACTERS = ("0", "O", "Q", "D", "C", "G", "8", "B", "3", "E", "F", "P", "R", "5", "S", "6")


def _fonts():
    import cv2

    return (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def _lookalike_image(rng, size):
    return glyph_scene(rng, size, CHARACTERS, count=(2, 7), occluders=False, fonts=_fonts(), height=(0.12, 0.35),
                       max_angle=15.0)


def make_lookalike_dataset(root, n_train=600, n_val=300, imgsz=160, seed=0) -> Path:
    """Write the look-alike detection data set (16 classes of confusable characters); returns its data YAML.

    Args: as :func:`pst_yolo.data.make_detection_dataset`.
    """
    params = dict(kind="lookalike", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, [f"char_{c}" for c in CHARACTERS], _lookalike_image, n_train, n_val, imgsz, seed,
                      "pst-yolo look-alike detection data (16 classes of confusable characters)")
