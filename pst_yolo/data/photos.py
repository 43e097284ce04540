"""The real-photo detection set: small objects cut from real photographs, pasted on real photographic backgrounds.

Every pixel comes from the photographs bundled inside scikit-image's package (``skimage/data``: read as files, nothing is
fetched): coins (the 24 coins of ``coins.png``, found by thresholding), faces (the 100 face crops of ``lfw_subset``),
a cat's head (``chelsea``), an espresso cup (``coffee``) and a motorcycle (``motorcycle_left``). Each object is scaled to
8-32 px on its long side (the P3 regime: a 160 px image has a 20 x 20 P3 map), jittered in brightness and contrast,
and pasted with a soft mask, 4-12 per image, on a crop of a texture or scene photograph (brick, grass, gravel, moon,
Hubble deep field, immunohistochemistry, retina, the cameraman's field), with unlabelled photo patches as distractors.
Generation is deterministic for a seed; the photographs' licences are scikit-image's (``skimage/data/README.txt``).
"""

from __future__ import annotations

import functools

import numpy as np

from pst_yolo.data.writer import box_line, write_yolo

CLASSES = ("coin", "face", "cat", "cup", "motorcycle")
# Object crops (x1, y1, x2, y2) in the source photographs, with the mask that cuts them out.
CROPS = {
    "cat": ("chelsea.png", (40, 0, 330, 300), "ellipse"),
    "cup": ("coffee.png", (40, 0, 570, 330), "ellipse"),
    "motorcycle": ("motorcycle_left.png", (90, 110, 690, 405), "box"),
}
BACKGROUNDS = ("brick.png", "grass.png", "gravel.png", "moon.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
               "camera.png", "page.png", "rocket.jpg")
DISTRACTORS = ("astronaut.png", "hubble_deep_field.jpg", "ihc.png", "text.png", "camera.png")
SIZE_RANGE = (8, 32)  # long side of a pasted object, pixels, at the 160 px image size the study uses (scaled with imgsz)


def _photo_dir():
    """scikit-image's bundled photographs (a folder inside the installed package); a clear error when it is missing."""
    try:
        import importlib.resources

        path = importlib.resources.files("skimage.data")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "pst-yolo: the real-photo data set cuts its objects from the photographs bundled with scikit-image, a "
            "pst-yolo dependency that is missing here: pip install scikit-image"
        ) from None
    return path


@functools.lru_cache(maxsize=None)
def _read(name: str) -> np.ndarray:
    """A bundled photograph as BGR uint8 (grayscale ones replicated to 3 channels)."""
    import cv2

    path = _photo_dir() / name
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"pst-yolo: scikit-image's photograph {path} is missing or unreadable")
    return img


def _ellipse_mask(h: int, w: int) -> np.ndarray:
    import cv2

    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2), (max(w // 2 - 1, 1), max(h // 2 - 1, 1)), 0, 0, 360, 255, -1)
    return m


@functools.lru_cache(maxsize=None)
def _sources() -> dict:
    """class name -> list of (patch BGR uint8, mask uint8) object instances at source resolution."""
    import cv2

    coins = cv2.cvtColor(_read("coins.png"), cv2.COLOR_BGR2GRAY)
    # coins: brighter than their local background; components of the closed, opened threshold are the 24 coins
    fg = (cv2.GaussianBlur(coins, (5, 5), 0).astype(np.int32) >
          cv2.GaussianBlur(coins, (0, 0), 20).astype(np.int32) + 15).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(fg)
    coin_img = _read("coins.png")
    out = {"coin": [(coin_img[y : y + h, x : x + w], _ellipse_mask(h, w)) for x, y, w, h, a in stats[1:] if a > 300]}
    faces = np.load(str(_photo_dir() / "lfw_subset.npy"))[:100]  # the first 100 of the subset are faces
    out["face"] = [(cv2.cvtColor((f * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR), _ellipse_mask(25, 25)) for f in faces]
    for cls, (name, box, mask) in CROPS.items():
        img = _read(name)
        x1, y1, x2, y2 = box
        patch = img[y1:y2, x1:x2]
        h, w = patch.shape[:2]
        out[cls] = [(patch, _ellipse_mask(h, w) if mask == "ellipse" else np.full((h, w), 255, np.uint8))]
    return out


def _background(rng, size: int) -> np.ndarray:
    """A random crop of a texture or scene photograph, scaled to ``size``, flipped and colour-jittered."""
    import cv2

    img = _read(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    h, w = img.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    bg = cv2.resize(img[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    gain = rng.uniform(0.6, 1.3, 3)  # per-channel: grey photographs get a tint, colour ones a white-balance shift
    return np.clip(bg.astype(np.float32) * gain + rng.uniform(-30, 30), 0, 255).astype(np.uint8)


def _paste(rng, img, patch, mask, long_side: int):
    """Paste ``patch`` scaled to ``long_side`` at a random place, soft-masked; returns the pixels it covers (a bool
    mask of its own size) and its top-left corner."""
    import cv2

    size = img.shape[0]
    h, w = patch.shape[:2]
    aspect = rng.uniform(0.85, 1.15)
    s = long_side / max(h, w * aspect)
    nh, nw = max(int(round(h * s)), 3), max(int(round(w * aspect * s)), 3)
    p = cv2.resize(patch, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    m = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    if rng.random() < 0.5:
        p, m = p[:, ::-1], m[:, ::-1]
    p = np.clip((p - p.mean()) * rng.uniform(0.7, 1.3) + p.mean() * rng.uniform(0.7, 1.3), 0, 255)
    y0, x0 = int(rng.integers(0, size - nh + 1)), int(rng.integers(0, size - nw + 1))
    region = img[y0 : y0 + nh, x0 : x0 + nw].astype(np.float32)
    img[y0 : y0 + nh, x0 : x0 + nw] = (region * (1 - m[..., None]) + p * m[..., None]).astype(np.uint8)
    return m > 0.5, (x0, y0)


def _photo_image(rng, size: int):
    """One image: a photographic background, 0-3 unlabelled distractor patches, 4-12 labelled objects; objects less
    than half visible after later pastes are dropped."""
    img = _background(rng, size)
    sources = _sources()
    lo, hi = (v * size / 160 for v in SIZE_RANGE)
    for _ in range(rng.integers(0, 4)):  # unlabelled photo patches of object size
        src = _read(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))])
        side = int(rng.integers(20, 80))
        y, x = int(rng.integers(0, src.shape[0] - side)), int(rng.integers(0, src.shape[1] - side))
        _paste(rng, img, src[y : y + side, x : x + side], _ellipse_mask(side, side), int(rng.uniform(lo, hi)))
    owner = np.full((size, size), -1, np.int32)
    objects = []
    for _ in range(rng.integers(4, 13)):
        cls = int(rng.integers(len(CLASSES)))
        instances = sources[CLASSES[cls]]
        patch, mask = instances[int(rng.integers(len(instances)))]
        long_side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        on, (x0, y0) = _paste(rng, img, patch, mask, long_side)
        view = owner[y0 : y0 + on.shape[0], x0 : x0 + on.shape[1]]
        view[on] = len(objects)
        objects.append((cls, int(on.sum())))
    labels = []
    for i, (cls, total) in enumerate(objects):
        ys, xs = np.nonzero(owner == i)
        if len(xs) >= 0.5 * total > 0:
            labels.append(box_line(cls, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, size))
    return img, labels


def make_photo_dataset(root, n_train=600, n_val=300, imgsz=160, seed=0):
    """Write the real-photo detection data set (many 8-32 px objects cut from real photographs); returns its data YAML.

    Args: as :func:`pst_yolo.data.make_detection_dataset`. Reads scikit-image's bundled photographs; nothing is
    downloaded.
    """
    _sources()  # fail before any folder is written when scikit-image is missing
    params = dict(kind="photos", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    return write_yolo(root, params, list(CLASSES), _photo_image, n_train, n_val, imgsz, seed,
                      "pst-yolo real-photo detection data (objects and backgrounds from scikit-image's photographs)")
