"""What fine attention does to trained PST checkpoints: every fine setting and fusion, per layer, BN re-estimation and
the activation shift (pst_yolo.finecheck).

    pst-yolo finecheck runs/detect/train/weights/last.pt data=my.yaml imgsz=640
    pst-yolo finecheck a.pt b.pt data=my.yaml imgsz=160 --per-layer --bn 256 --stats 64 --out check.json
    pst-yolo finecheck --table a.json b.json         # checkpoints x settings, mean, worst, how often fine costs

Prints a Markdown table per checkpoint (mAP50-95 and its difference to k=0) and, with --stats, the activation shift.
"""

from __future__ import annotations

import argparse
import json
import sys


def parser():
    """The command line of ``pst-yolo finecheck``."""
    ap = argparse.ArgumentParser(prog="pst-yolo finecheck", description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", help="PST checkpoints (with --table: JSON files of --out)")
    ap.add_argument("--data", default=None, help="data YAML (val split validated on, train split for --bn)")
    ap.add_argument("--table", action="store_true", help="print the checkpoints x settings table of --out JSON files, "
                                                          "with the mean, the worst and how often a setting costs")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=8, help="the fine setting compared with k=0")
    ap.add_argument("--fusions", nargs="+", default=["add", "joint"], choices=["add", "joint"])
    ap.add_argument("--per-layer", action="store_true", help="also fine attention in each PST layer alone")
    ap.add_argument("--bn", type=int, default=0, metavar="N", help="BN statistics re-estimated from N training images")
    ap.add_argument("--bn-data", default=None, help="data YAML whose train split feeds --bn (default: --data)")
    ap.add_argument("--stats", type=int, default=0, metavar="N", help="activation shift over N validation images")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    from pst_yolo.finecheck import finecheck, markdown, matrix

    if args.table:
        results = [r for f in args.weights for r in json.load(open(f))]
        print(matrix(results))
        return 0
    if not args.data:
        ap.error("--data is required (except with --table)")
    from pst_yolo.offline import seed_fonts, set_offline_env

    set_offline_env()
    seed_fonts()
    results = []
    for w in args.weights:
        print(f"pst-yolo finecheck: {w}", flush=True)
        results.append(finecheck(w, args.data, args.imgsz, args.k, tuple(args.fusions), args.per_layer, args.bn,
                                 args.stats, args.batch, args.device, args.bn_data))
    print(markdown(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":  # the same as `pst-yolo finecheck`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["finecheck", *sys.argv[1:]]))
