"""The scanned-digits detection set: real handwriting scans, small, ten fine-grained classes, on real scanned pages.

Every object is one of the 1,797 handwritten-digit scans bundled with scikit-learn (``sklearn.datasets.load_digits``:
8 x 8 grey levels from the UCI optical-recognition set, read from the installed package, nothing fetched), upsampled
to 8-20 px (the P3 regime of a 160 px image; blurry, as a scan enlarged is), inked in a dark colour with a little
pressure jitter, 4-10 per image, on a crop of a real scanned page (scikit-image's ``page.png`` and ``text.png``, printed
text that no label names) under uneven lighting and sensor noise. The two splits draw from disjoint halves of the
scans, so validation digits were written by hands the model never saw. Finding a digit is moderately hard (printed
characters look like it) and naming it is hard (``1/7``, ``3/8/9``, ``4/9`` at 8 x 8 source resolution).
Generation is deterministic for a seed.
"""

from __future__ import annotations

import functools

import numpy as np

from pst_yolo.data.writer import box_line, write_yolo

CLASSES = tuple(f"digit_{d}" for d in range(10))
PAGES = ("page.png", "text.png")
SIZE_RANGE = (8, 20)  # long side of a pasted digit, pixels, at 160 px (scaled with imgsz)


@functools.lru_cache(maxsize=None)
def _digits():
    """(images float32 (N, 8, 8) in [0, 1], labels int (N,)); a clear error when scikit-learn is missing."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "pst-yolo: the scanned-digits data set reads the digit scans bundled with scikit-learn, a pst-yolo "
            "dependency that is missing here: pip install scikit-learn"
        ) from None
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=None)
def _pages():
    from pst_yolo.data.photos import _read

    return tuple(_read(name) for name in PAGES)


def _background(rng, size):
    import cv2

    page = _pages()[int(rng.integers(len(PAGES)))]
    low = 1.02 * size / min(page.shape[:2])  # one crop covers the image: no tiling seams
    scale = rng.uniform(low, low * 1.8)
    big = cv2.resize(page, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    y, x = int(rng.integers(big.shape[0] - size + 1)), int(rng.integers(big.shape[1] - size + 1))
    img = big[y : y + size, x : x + size].astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # uneven lighting, a paper tint, sensor noise
    light = 0.75 + 0.35 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy + rng.uniform(0, 1))
    img = img * np.clip(light, 0.5, 1.3)[..., None] * rng.uniform(0.85, 1.0, 3).astype(np.float32)
    return img + rng.normal(0, rng.uniform(2, 10), img.shape).astype(np.float32)


class _Scenes:
    """``make_image`` for :func:`write_yolo`: the first ``n_train`` images take digits from one half of the scans,
    the rest from the other half."""

    def __init__(self, n_train, digit_size=SIZE_RANGE):
        self.n_train, self.count, self.digit_size = n_train, 0, digit_size
        images, _ = _digits()
        order = np.random.default_rng(1797).permutation(len(images))
        self.pools = order[: len(order) // 2], order[len(order) // 2 :]

    def __call__(self, rng, size):
        import cv2

        images, labels = _digits()
        pool = self.pools[self.count >= self.n_train]
        self.count += 1
        img = _background(rng, size)
        lo, hi = (max(6, round(v * size / 160)) for v in self.digit_size)
        taken = np.zeros((size, size), bool)
        labels_out = []
        for _ in range(int(rng.integers(4, 11))):
            i = int(pool[rng.integers(len(pool))])
            s = int(rng.integers(lo, hi + 1))
            w = max(4, int(round(s * rng.uniform(0.7, 1.0))))
            ink = cv2.resize(images[i], (w, s), interpolation=cv2.INTER_LINEAR)
            ink = np.clip(ink * rng.uniform(0.8, 1.3), 0, 1)
            on = ink > 0.3
            if not on.any():
                continue
            ys, xs = np.nonzero(on)
            y0, x0 = int(rng.integers(0, size - s)), int(rng.integers(0, size - w))
            box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            if taken[box[1] : box[3], box[0] : box[2]].any():  # no overlapping digits: the box must name one
                continue
            taken[max(0, box[1] - 1) : box[3] + 1, max(0, box[0] - 1) : box[2] + 1] = True
            color = (rng.uniform(10, 80) + rng.uniform(-15, 15, 3)).astype(np.float32)  # dark, slightly tinted ink
            region = img[y0 : y0 + s, x0 : x0 + w]
            img[y0 : y0 + s, x0 : x0 + w] = region * (1 - ink[..., None]) + color * ink[..., None]
            labels_out.append(box_line(int(labels[i]), *box, size))
        return np.clip(img, 0, 255).astype(np.uint8), labels_out


def make_scans_dataset(root, n_train=600, n_val=300, imgsz=160, seed=0, digit_size=SIZE_RANGE):
    """Write the scanned-digits detection data set (10 classes of handwritten digit scans, 8-20 px by default, on
    scanned pages); returns its data YAML.

    Args: as :func:`pst_yolo.data.make_detection_dataset`; ``digit_size`` is the (min, max) long side of a digit in
    pixels at 160 px (scaled with ``imgsz``): larger digits make an easier set. Reads scikit-learn's and
    scikit-image's bundled files; nothing is downloaded.
    """
    _digits(), _pages()  # fail before any folder is written when a bundled file is missing
    lo, hi = (int(v) for v in digit_size)
    if not 4 <= lo <= hi:
        raise ValueError(f"pst-yolo scans data: digit_size={tuple(digit_size)} must be (min, max) with 4 <= min <= max")
    params = dict(kind="scans", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    if (lo, hi) != SIZE_RANGE:  # the default's cache key stays as it was
        params["digit_size"] = [lo, hi]
    return write_yolo(root, params, list(CLASSES), _Scenes(n_train, (lo, hi)), n_train, n_val, imgsz, seed,
                      "pst-yolo scanned-digits detection data (scikit-learn's digit scans on scikit-image's pages)")
