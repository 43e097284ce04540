"""Built-in demo data, generated locally and deterministically (no downloads), in the formats Ultralytics reads.

- ``detect``: coloured circles, squares and triangles of widely varying size on textured backgrounds (P3/P4/P5).
- ``classify``: one centred shape per image, same three classes (ImageFolder).
- ``segment``, ``pose``, ``obb``: the shapes with polygons, rotated squares with corner keypoints, rotated rectangles
  and ellipses with oriented boxes (``pst_yolo.data.shapes``).
- ``clutter``: a second detection set unlike the shapes: glyphs on cluttered, occluded scenes (``pst_yolo.data.clutter``).
- ``photos``: a third detection set of real photographic pixels with many small (8-32 px) objects: coins, faces, a cat,
  a cup and a motorcycle cut from the photographs bundled with scikit-image (``pst_yolo.data.photos``).
- ``lookalike``: a fourth detection set where naming an object is the hard part: 10 classes of confusable characters
  (``0 O Q D C G``, ``8 B 3``, ``S``; ``pst_yolo.data.lookalike``).
- ``scans``: a fifth detection set of real handwriting scans: 8-20 px digits (scikit-learn's bundled scans, disjoint
  writers per split) on real scanned pages, 10 fine-grained classes (``pst_yolo.data.scans``).

Usage:
    python -m pst_yolo.data --out demo_data          # writes demo_data/<kind>/ for every kind above
"""

from __future__ import annotations

from pathlib import Path

from pst_yolo.data.clutter import GLYPHS, make_clutter_dataset
from pst_yolo.data.lookalike import make_lookalike_dataset
from pst_yolo.data.photos import make_photo_dataset
from pst_yolo.data.scans import make_scans_dataset
from pst_yolo.data.shapes import (
    CLASSES,
    make_classification_dataset,
    make_detection_dataset,
    make_obb_dataset,
    make_pose_dataset,
    make_segmentation_dataset,
)

__all__ = [
    "CLASSES", "GLYPHS", "MAKERS", "make_classification_dataset", "make_clutter_dataset", "make_demo_data",
    "make_detection_dataset", "make_lookalike_dataset", "make_obb_dataset", "make_photo_dataset", "make_pose_dataset",
    "make_scans_dataset", "make_segmentation_dataset",
]
# task -> generator of its demo data set (the data YAML, or the ImageFolder root for classification)
MAKERS = {
    "detect": make_detection_dataset,
    "classify": make_classification_dataset,
    "segment": make_segmentation_dataset,
    "pose": make_pose_dataset,
    "obb": make_obb_dataset,
    "clutter": make_clutter_dataset,
    "photos": make_photo_dataset,
    "lookalike": make_lookalike_dataset,
    "scans": make_scans_dataset,
}


def make_demo_data(out="demo_data", seed=0) -> dict:
    """Every demo data set under ``out``; returns ``{kind: data.yaml (or the classification folder)}``."""
    return {kind: make(Path(out) / kind, seed=seed) for kind, make in MAKERS.items()}
