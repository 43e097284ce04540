#!/usr/bin/env python
"""Train several models side by side (same data, settings and seeds) with the stock trainer; table + learning curves.

    python scripts/compare.py yolo11n.yaml yolo11n-pst.yaml yolo12n.yaml                  # demo data, 25 epochs, seed 0
    python scripts/compare.py yolo11n.yaml yolo11n-pst.yaml --seeds 0 1 --epochs 100 --jobs 2
    python scripts/compare.py yolo11n.yaml yolo11n-pst.yaml --data my.yaml --imgsz 640 --device 0 --train close_mosaic=10
    python scripts/compare.py --summarize demo=runs/cmp-demo photos=runs/cmp-photos   # finished runs side by side
    python scripts/compare.py --summarize demo=runs/seeds012,runs/seeds345   # separate runs of one set, merged

Writes <out>/table.md (mean ± std over seeds, per-seed values, ratio to the first model without PST), curves.png
(validation metric per epoch, mean and min..max band per model) and results.json; prints the table. --summarize also
prints each baseline's seed spread and how many seeds per model a 3% difference needs to stand 2 standard errors clear.
"""

from __future__ import annotations

import argparse

from pst_yolo.offline import seed_fonts, set_offline_env

# Before Ultralytics is imported (here and in every `yolo` subprocess): no network checks, no auto-installs.
set_offline_env()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="model YAML names or paths")
    ap.add_argument("--summarize", nargs="+", default=None, metavar="NAME=OUT[,OUT...]",
                    help="print finished comparisons side by side (one column per data set; several OUT folders of "
                         "one set, e.g. other seeds, are merged) and exit")
    ap.add_argument("--data", default=None, help="data YAML or classification folder (default: built-in demo data)")
    ap.add_argument("--val-data", default=None, help="evaluate the final weights on this data YAML's val split")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--k", type=int, nargs="+", default=[0, 8], help="fine-attention settings validated for PST models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at the same time (CPU: one per core pair is good)")
    ap.add_argument("--weights", choices=("last", "best"), default="last")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of the same command")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE", help="extra yolo train arguments")
    ap.add_argument("--out", default="runs/compare")
    args = ap.parse_args(argv)

    from pst_yolo.compare import compare, markdown_table, parse_train_args, summary_table

    if args.summarize:
        sets = {}
        for item in args.summarize:
            name, sep, outs = item.partition("=")
            if not sep or not outs:
                ap.error(f"--summarize takes NAME=OUT[,OUT...], got {item!r}")
            sets[name] = outs.split(",")
        try:
            print(summary_table(sets))
        except (ValueError, FileNotFoundError) as e:  # folders that cannot be merged, or no results.json in one
            ap.error(f"--summarize: {e}")
        return
    if not args.models:
        ap.error("give the models to compare (or --summarize NAME=OUT ...)")

    seed_fonts()  # Ultralytics' dataset check would look for its plot font online otherwise

    result = compare(args.models, args.data, args.epochs, args.imgsz, args.batch, args.seeds, args.k, args.out,
                     args.jobs, args.device, args.weights, args.reuse, args.val_data, **parse_train_args(args.train))
    print(markdown_table(result))
    print(f"curves: {args.out}/curves.png")


if __name__ == "__main__":
    main()
