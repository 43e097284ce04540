"""Train several models side by side (same data, settings and seeds) with the stock trainer; table + learning curves.

    pst-yolo compare yolo11n.yaml yolo11n-pst.yaml yolo12n.yaml                        # demo data, 25 epochs, seed 0
    pst-yolo compare yolo11n.yaml yolo11n-pst-res.yaml data=my.yaml epochs=100 seeds=0,1 jobs=2
    pst-yolo compare yolo11n.yaml yolo11n-pst.yaml data=my.yaml imgsz=640 device=0 close_mosaic=10  # any yolo train arg
    pst-yolo compare yolo11n.yaml yolo11n-pst-res.yaml --control seeds=0,1,2   # + init-matched control, paired table
    pst-yolo compare yolo11n.yaml yolo11n-pst-res.yaml --control --pretrain clutter/data.yaml data=photos/data.yaml
                                                  # fine-tuning: every arm from one stock checkpoint trained on clutter
    pst-yolo compare --summarize demo=runs/cmp-demo photos=runs/cmp-photos    # finished comparisons side by side
    pst-yolo compare --summarize demo=runs/seeds012,runs/seeds345            # separate runs of one set, merged

Writes <out>/table.md (mean ± std over seeds, per-seed values, ratio to the first model without PST), curves.png
(validation metric per epoch, mean and min..max band per model) and results.json; prints the table. Progress: one line
per run and epoch (bars on a terminal). Ctrl-C stops every training; the same command again resumes (finished runs are
reused). ``key=value`` arguments that are not options of this command go to every ``yolo train``. --summarize also
prints each baseline's seed spread and how many seeds per model a 3% difference needs to stand 2 standard errors clear.
"""

from __future__ import annotations

import argparse
import sys


def parser():
    """The command line of ``pst-yolo compare``."""
    ap = argparse.ArgumentParser(prog="pst-yolo compare", description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="model YAML names or paths (.pt to fine-tune); key=value train args")
    ap.add_argument("--summarize", nargs="+", default=None, metavar="NAME=OUT[,OUT...]",
                    help="print finished comparisons side by side (one column per data set; several OUT folders of "
                         "one set, e.g. other seeds, are merged) and exit")
    ap.add_argument("--data", default=None, help="data YAML or classification folder (default: built-in demo data)")
    ap.add_argument("--val-data", default=None, help="evaluate the final weights on this data YAML's val split")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=_ints, nargs="+", default=[[0]], help="seeds, e.g. 0 1 2 or 0,1,2")
    ap.add_argument("--k", type=_ints, nargs="+", default=[[0, 8]], help="fine-attention settings validated for PST "
                                                                         "models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at the same time (CPU: one per core pair is good)")
    ap.add_argument("--weights", choices=("last", "best"), default="last")
    ap.add_argument("--fresh", action="store_true", help="train every run again (default: reuse finished ones)")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE", help="extra yolo train arguments (or give "
                                                                               "them as plain key=value)")
    ap.add_argument("--control", action="store_true",
                    help="add an init-matched control after every PST model (its stock network on the PST model's "
                         "initial weights, seed by seed) and a paired table")
    ap.add_argument("--control-only", action="store_true",
                    help="train only those controls (the PST and stock runs are in other folders: --summarize merges)")
    ap.add_argument("--pretrain", default=None, metavar="DATA.yaml|STOCK.pt",
                    help="the fine-tuning path: every arm (controls too) starts from one stock checkpoint, trained "
                         "once here on this data YAML (into <out>/pretrain) or given as a .pt")
    ap.add_argument("--pretrain-epochs", type=int, default=None, help="epochs of that stock training (default: "
                                                                      "--epochs)")
    ap.add_argument("--out", default="runs/compare")
    return ap


def _ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    ap = parser()
    args = ap.parse_intermixed_args(argv)  # models and key=value pairs may come between the options
    from pst_yolo.compare import compare, markdown_table, parse_train_args, summary_table
    from pst_yolo.offline import seed_fonts, set_offline_env

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
        return 0
    models = [m for m in args.models if "=" not in m]
    if not models:
        ap.error("give the models to compare (or --summarize NAME=OUT ...)")
    try:
        train = parse_train_args([*args.train, *(m for m in args.models if "=" in m)])
    except ValueError as e:
        ap.error(str(e))
    set_offline_env()  # before Ultralytics is imported (here and in every `yolo` subprocess)
    seed_fonts()  # Ultralytics' dataset check would look for its plot font online otherwise
    seeds = [s for group in args.seeds for s in group]
    ks = [k for group in args.k for k in group]
    try:
        result = compare(models, args.data, args.epochs, args.imgsz, args.batch, seeds, ks, args.out, args.jobs,
                         args.device, args.weights, not args.fresh, args.val_data, control="only" if args.control_only else args.control,
                         pretrain=args.pretrain, pretrain_epochs=args.pretrain_epochs, **train)
    except ValueError as e:  # other arguments into an existing comparison, a bad model list, ...
        ap.error(str(e))
    print(markdown_table(result))
    print(f"curves: {args.out}/curves.png")
    return 0


if __name__ == "__main__":  # the same as `pst-yolo compare`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["compare", *sys.argv[1:]]))
