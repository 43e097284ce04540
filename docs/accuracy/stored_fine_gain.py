"""What the stored fine setting buys on unseen images: each checkpoint validated as stored and at k=0 on a held-out
set.

    python docs/accuracy/stored_fine_gain.py CKPT=DATA.yaml [CKPT=DATA.yaml ...] [--imgsz 128]

Checkpoints whose stored setting is k=0 everywhere are skipped: they deploy at k=0 already. Prints, per checkpoint, the
stored setting, its fitness gain over k=0 on the trainer's validation split (``ckpt["pst_fine"]``, recorded at the
end of training) and the mAP50-95 gain on the held-out set.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

import torch


def validate(ckpt: str, data: str, imgsz: int, topk: int | None) -> float:
    from ultralytics import YOLO

    from pst_yolo.runtime import set_topk

    print(f"validating {ckpt} at {'the stored setting' if topk is None else f'k={topk}'} ...", file=sys.stderr,
          flush=True)
    model = YOLO(ckpt)
    if topk is not None:
        set_topk(model, topk)
    with contextlib.redirect_stdout(io.StringIO()):
        return model.val(data=data, imgsz=imgsz, batch=16, verbose=False, plots=False, workers=0).box.map


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="CKPT=DATA.yaml")
    ap.add_argument("--imgsz", type=int, default=128)
    args = ap.parse_args()
    print("| checkpoint | stored | validation gain over k=0 (fitness) | held-out mAP50-95 stored | k=0 | gain |")
    print("|---|---|---:|---:|---:|---:|")
    for pair in args.pairs:
        ckpt, data = pair.split("=", 1)
        fine = torch.load(ckpt, map_location="cpu", weights_only=False).get("pst_fine")
        if not fine or fine["setting"] == "0":
            continue
        gain = fine["fitness"][fine["setting"]] - fine["fitness"]["0"]
        stored, k0 = validate(ckpt, data, args.imgsz, None), validate(ckpt, data, args.imgsz, 0)
        print(f"| {ckpt} | k={fine['setting'].replace('@', ' in layer ')} | {gain:+.5f} | {stored:.4f} | {k0:.4f} | "
              f"{stored - k0:+.5f} |", flush=True)


if __name__ == "__main__":
    main()
