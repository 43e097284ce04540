#!/usr/bin/env python
"""Reproduce the paper's Table 4 ablations: train each PST variant briefly, validate with fine attention on and off.

    pst-yolo ablate                                   # demo data, default variant set, 3 epochs
    pst-yolo ablate --data my.yaml --variants default,k16,n2,gating --epochs 20 --imgsz 640 --device 0

Variants: default, k0, k16, k32 (or any k<int>), n2, n4, n6 (or any n<int>), gating, linear_relu, linear_elu,
separate_kv. Prints one Markdown table; variant YAMLs, training runs, table.md and results.json go to --out.
"""

from __future__ import annotations

import argparse
import sys


def parser():
    """The command line of ``pst-yolo ablate``."""
    from pst_yolo.ablation import DEFAULT_VARIANTS

    ap = argparse.ArgumentParser(prog="pst-yolo ablate", description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variant names")
    ap.add_argument("--data", default=None, help="dataset YAML (or classification folder); default: built-in demo")
    ap.add_argument("--model", default="yolo11-pst.yaml", help="base model YAML with PST rows")
    ap.add_argument("--scale", default="n", help="model scale letter (n/s/m/l/x)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/pst_ablation", help="run folder")
    ap.add_argument("--latency-runs", type=int, default=10)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    from pst_yolo.ablation import run_study

    run_study(args.variants, args.data, args.model, args.scale, args.epochs, args.imgsz, args.batch, args.device,
              args.out, args.latency_runs)
    print(open(f"{args.out}/table.md").read())


if __name__ == "__main__":  # the same as `pst-yolo ablate`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["ablate", *sys.argv[1:]]))
