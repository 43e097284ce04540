#!/usr/bin/env python
"""Draw what PST attends to: coarse attention mass, chosen fine regions per head, feature heat maps, predictions.

    pst-yolo visualize --model runs/detect/train/weights/best.pt --source images/ --out vis/
    pst-yolo visualize --model yolo11n-pst.yaml --source img.png --out vis/ --imgsz 320 --k 16 --layer 16

Writes <out>/<image stem>.png and a .json sidecar with the selected fine positions. CPU by default, offline.
"""

from __future__ import annotations

import argparse
import sys


def parser():
    """The command line of ``pst-yolo visualize``."""
    ap = argparse.ArgumentParser(prog="pst-yolo visualize", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="PST checkpoint (.pt) or model YAML name, e.g. yolo11n-pst.yaml")
    ap.add_argument("--source", required=True, help="image file or folder of images")
    ap.add_argument("--out", required=True, help="output folder for the PNGs")
    ap.add_argument("--imgsz", type=int, default=320, help="square inference size (multiple of 32)")
    ap.add_argument("--k", type=int, default=None, help="fine regions per head (default: the model's; 0 = coarse only)")
    ap.add_argument("--layer", type=int, action="append", help="PST layer index to show (repeatable; default all)")
    ap.add_argument("--conf", type=float, default=0.25, help="detection confidence threshold")
    ap.add_argument("--display", type=int, default=320, help="minimum tile size in pixels")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-images", type=int, default=None)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)

    from pst_yolo.visualize import visualize

    results = visualize(args.model, args.source, args.out, imgsz=args.imgsz, k=args.k, layers=args.layer,
                        conf=args.conf, display=args.display, device=args.device, max_images=args.max_images)
    for vis in results:
        print(vis.path)


if __name__ == "__main__":  # the same as `pst-yolo visualize`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["visualize", *sys.argv[1:]]))
