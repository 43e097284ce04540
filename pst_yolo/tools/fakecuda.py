"""The CUDA path of every shipped PST model, checked on a machine without a GPU (fake CUDA tensors).

    pst-yolo fake-cuda                               # every shipped PST model: eval in 4 dtype modes + an AMP training
                                                     # step; the branch matrix of a PST layer (about 3 min on 2 cores)
    pst-yolo fake-cuda --models yolo11n-pst.yaml --full     # every k / batch / size for one model
    pst-yolo fake-cuda --no-branches --workers 1

Prints one line per check and a summary; exits 1 if any check found a problem (a CPU tensor in a CUDA forward, a host
sync inside a PST layer, a dtype a kernel refuses, a kernel-rule violation). What it proves and what only a real GPU can
check: docs/performance.md, "The CUDA path without a GPU".
"""

from __future__ import annotations

import argparse
import sys
import time


def parser():
    """The command line of ``pst-yolo fake-cuda``."""
    from pst_yolo.fakecuda import ZOO

    ap = argparse.ArgumentParser(prog="pst-yolo fake-cuda", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO), help="model YAML names or checkpoints (default: the zoo)")
    ap.add_argument("--full", action="store_true", help="every k x batch x size per model (default: one, in rotation)")
    ap.add_argument("--no-branches", action="store_true", help="skip the branch matrix of a PST layer")
    ap.add_argument("--workers", type=int, default=2, help="processes (models are split between them)")
    ap.add_argument("--verbose", action="store_true", help="a line per check, not only per problem")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    from pst_yolo import fakecuda

    t0, problems = time.perf_counter(), []

    def show(report):
        if report.problems or args.verbose:
            print(report.summary(), flush=True)
        problems.extend(f"{report.model} [{report.setting}]: {p}" for p in report.problems)

    print(f"pst-yolo fake-cuda: {len(args.models)} model(s) on fake CUDA tensors, {args.workers} worker(s)", flush=True)
    reports = fakecuda.run_plan(fakecuda.plan(args.models, args.full), show, args.workers)
    syncs = {}
    for r in reports:
        for where, n in r.stock_syncs.items():
            syncs[where.split(" ", 1)[-1]] = syncs.get(where.split(" ", 1)[-1], 0) + n
    inside = sum(r.pst_syncs for r in reports)
    print(f"models: {len({r.model for r in reports})}, checks: {len(reports)} "
          f"({sum('train' in r.setting for r in reports)} AMP training steps), problems: "
          f"{sum(len(r.problems) for r in reports)}, host syncs inside PST layers: {inside}, "
          f"outside (stock code): {', '.join(f'{k} {v}' for k, v in sorted(syncs.items())) or 'none'}")
    if not args.no_branches:
        rows = fakecuda.branch_matrix()
        reached = sorted({b for row in rows for b in row["report"].branches})
        for row in rows:
            problems.extend(f"PST layer [{row['mode']}, k={row['k']}, {row['strategy']}, {row['backend']}, libraries "
                            f"{row['libraries']}, {row['fusion']}]: {p}" for p in row["report"].problems)
        print(f"branch matrix: {len(rows)} settings of a PST layer (dtype mode x k x score strategy x kernel x "
              f"optional libraries, and the additive fusion); reached: {', '.join(reached)}")
    print(f"pst-yolo fake-cuda: {'clean' if not problems else f'{len(problems)} problem(s)'} in "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":  # the same as `pst-yolo fake-cuda`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["fake-cuda", *sys.argv[1:]]))
