"""Write pst-yolo's generated data sets (deterministic, offline) in the formats Ultralytics reads.

    pst-yolo data                                   # every kind into demo_data/<kind>/
    pst-yolo data --kinds photos lookalike --n-train 600 --n-val 300 --imgsz 160 --out study_data
    pst-yolo data --kinds scans --digit-size 14 28 --n-train 600 --n-val 300 --imgsz 160 --out study_data_large
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser():
    """The command line of ``pst-yolo data``."""
    from pst_yolo.data import MAKERS

    ap = argparse.ArgumentParser(prog="pst-yolo data", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    ap.add_argument("--kinds", nargs="+", default=list(MAKERS), choices=list(MAKERS), help="which data sets")
    ap.add_argument("--n-train", type=int, default=None, help="training images (default: each kind's own)")
    ap.add_argument("--n-val", type=int, default=None, help="validation images (default: each kind's own)")
    ap.add_argument("--imgsz", type=int, default=None, help="image size (default: each kind's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--digit-size", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                    help="scans: long side of a digit in pixels at 160 px (default 8 20; 14 28 is an easier set)")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    from pst_yolo.data import MAKERS

    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val), ("imgsz", args.imgsz)) if v}
    if args.digit_size and "scans" not in args.kinds:
        raise SystemExit("pst-yolo data: --digit-size applies to --kinds scans only")
    for kind in args.kinds:
        extra = {"digit_size": tuple(args.digit_size)} if kind == "scans" and args.digit_size else {}
        print(f"{kind}: {MAKERS[kind](Path(args.out) / kind, seed=args.seed, **sizes, **extra)}", flush=True)
    return 0


if __name__ == "__main__":  # the same as `pst-yolo data`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["data", *sys.argv[1:]]))
