"""``python -m pst_yolo.data --out demo_data``: write every demo data set."""

import argparse

from pst_yolo.data import make_demo_data


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write pst-yolo's demo data sets (generated locally, deterministic).")
    ap.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for kind, path in make_demo_data(args.out, args.seed).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
