"""The generated data sets (``pst_yolo.data``): deterministic, offline, valid for Ultralytics, with the properties each
one is made for; in particular the real-photo set of the accuracy study (small objects cut from real photographs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pst_yolo.data import MAKERS, make_photo_dataset
from pst_yolo.data.photos import CLASSES, SIZE_RANGE


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "data.yaml"):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_every_data_set_is_deterministic_and_valid_for_ultralytics(kind, tmp_path):
    make = MAKERS[kind]
    a = Path(make(tmp_path / "a", 6, 3, 64, seed=1))
    b = Path(make(tmp_path / "b", 6, 3, 64, seed=1))
    c = Path(make(tmp_path / "c", 6, 3, 64, seed=2))
    root = lambda p: p.parent if p.suffix == ".yaml" else p  # noqa: E731  (classification: an ImageFolder)
    assert _digest(root(a)) == _digest(root(b)) != _digest(root(c))
    if kind == "classify":
        return
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(a))
    assert Path(info["train"]).is_dir() and len(list(Path(info["train"]).glob("*.png"))) == 6
    for label in (root(a) / "labels").rglob("*.txt"):
        rows = [list(map(float, line.split())) for line in label.read_text().splitlines()]
        assert all(0 <= int(r[0]) < len(info["names"]) and all(0 <= v <= 1 for v in r[1:5]) for r in rows), label


def _train_label_stats(data: Path, imgsz: int):
    """(object long sides in pixels, objects per image, classes seen) of a detection set's training labels."""
    sizes, per_image, classes = [], [], set()
    for label in (data.parent / "labels" / "train").glob("*.txt"):
        rows = [list(map(float, line.split())) for line in label.read_text().splitlines()]
        per_image.append(len(rows))
        classes |= {int(r[0]) for r in rows}
        sizes += [max(r[3], r[4]) * imgsz for r in rows]
    return sizes, per_image, classes


def test_photo_set_has_many_small_real_objects(tmp_path):
    """Objects 8-32 px at 160 px (the P3 regime), several per image, every class present, backgrounds that differ."""
    import cv2

    data = Path(make_photo_dataset(tmp_path / "photos", n_train=40, n_val=10, imgsz=160, seed=0))
    sizes, per_image, classes = _train_label_stats(data, 160)
    assert classes == set(range(len(CLASSES)))
    assert np.mean(per_image) >= 5 and max(per_image) <= 12
    lo, hi = SIZE_RANGE
    assert lo - 1 <= np.percentile(sizes, 5) and np.percentile(sizes, 95) <= hi + 1 and np.median(sizes) < 24
    images = [cv2.imread(str(p)) for p in sorted((data.parent / "images" / "train").glob("*.png"))[:8]]
    assert len({round(float(im.mean()), 1) for im in images}) > 4  # varied photographic backgrounds


def test_photo_set_reads_only_the_installed_package():
    """No download: the photographs are files inside scikit-image's installed package (a pst-yolo dependency)."""
    import pst_yolo.data.photos as photos

    folder = Path(str(photos._photo_dir()))
    assert folder.parts[-2:] == ("skimage", "data")
    assert all((folder / n).is_file() for n in ("coins.png", "chelsea.png", "coffee.png", "lfw_subset.npy"))


def test_lookalike_set_has_many_confusable_classes(tmp_path):
    """The fourth study set: 10 classes of look-alike characters, several per image, every class present."""
    from pst_yolo.data import make_lookalike_dataset
    from pst_yolo.data.lookalike import CHARACTERS

    data = Path(make_lookalike_dataset(tmp_path / "lookalike", n_train=60, n_val=10, imgsz=160, seed=0))
    per_image, classes = [], set()
    for label in (data.parent / "labels" / "train").glob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        per_image.append(len(rows))
        classes |= {int(r[0]) for r in rows}
    assert len(CHARACTERS) == 10 and classes == set(range(10))
    assert 2 <= np.mean(per_image) <= 4


def test_scans_set_has_small_real_digits_from_disjoint_writers(tmp_path):
    """The fifth study set: scikit-learn's digit scans, 8-20 px at 160 px, all ten classes, and the validation images
    drawing on scans the training images never use (the two halves of the 1,797 scans)."""
    from pst_yolo.data import make_scans_dataset
    from pst_yolo.data.scans import SIZE_RANGE as SCAN_SIZES
    from pst_yolo.data.scans import _Scenes, _digits

    data = Path(make_scans_dataset(tmp_path / "scans", n_train=40, n_val=10, imgsz=160, seed=0))
    sizes, per_image, classes = _train_label_stats(data, 160)
    assert classes == set(range(10)) and np.mean(per_image) >= 4
    assert SCAN_SIZES[0] - 3 <= min(sizes) and max(sizes) <= SCAN_SIZES[1] + 1 and np.median(sizes) < 16
    train, val = _Scenes(40).pools
    assert not set(train) & set(val) and len(train) + len(val) == len(_digits()[0]) == 1797


def test_scans_digit_size_makes_larger_digits_and_rejects_bad_sizes(tmp_path):
    """``digit_size``: the easier variant of the scans set (digits 14-28 px at 160 px), a separate cache from the
    default's, and a clear error for a size range that cannot be drawn."""
    from pst_yolo.data import make_scans_dataset

    data = Path(make_scans_dataset(tmp_path / "large", n_train=40, n_val=10, imgsz=160, seed=0, digit_size=(14, 28)))
    sizes, _, _ = _train_label_stats(data, 160)
    assert 11 <= min(sizes) and max(sizes) <= 29 and np.median(sizes) >= 18
    with pytest.raises(ValueError, match=r"digit_size=\(20, 10\)"):
        make_scans_dataset(tmp_path / "bad", n_train=4, n_val=2, digit_size=(20, 10))
    from pst_yolo.tools.data import main

    with pytest.raises(SystemExit, match="--digit-size applies to --kinds scans only"):
        main(["--kinds", "clutter", "--digit-size", "14", "28", "--out", str(tmp_path / "cli")])
    assert main(["--kinds", "scans", "--digit-size", "14", "28", "--n-train", "40", "--n-val", "10", "--imgsz", "160",
                 "--out", str(tmp_path / "cli")]) == 0
    labels = [sorted(p.read_text() for p in (root / "labels" / "train").glob("*.txt"))
              for root in (tmp_path / "cli" / "scans", tmp_path / "large")]
    assert labels[0] == labels[1]  # the command writes what the function does
