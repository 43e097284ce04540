"""Fidelity table of the shipped PST models against the paper (Tables 1-3): parameters and GFLOPs, as Markdown.

Three FLOP figures per model, one forward pass of a batch-1 image (640 for detection, 224 for classification):
- "Ultralytics": ``ultralytics.utils.torch_utils.get_flops``, the number ``model.info()`` prints. THOP module hooks:
  convolutions only, attention matmuls are invisible, extrapolated from small stride-sized proxy images.
- "full k=8" / "full k=0": ``torch.utils.flop_counter.FlopCounterMode`` on the model in eval mode, which also counts
  the attention matmuls (bmm / SDPA) and the top-k scoring; k=8 is the paper's inference setting (fine attention on),
  k=0 is coarse attention only (the network as trained).

Usage:
    pst-yolo models                 # all shipped models, Markdown to stdout (a few minutes on CPU)
    pst-yolo models --baselines     # also the stock Ultralytics baselines of the paper's tables
    pst-yolo models --closed-form   # also the paper's closed-form PST parameter count for the N rows
    pst-yolo models --only r50-pst.yaml yolo11s-pst.yaml
    pst-yolo models --cost          # detection cost at 640 and 1280 px next to the stock models
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import torch


def build(name: str):
    """The ``nn.Module`` of ``YOLO(name)``, built quietly (no 'Model summary' lines in the table output)."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(40)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return YOLO(name, verbose=False).model
    finally:
        LOGGER.setLevel(level)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def full_gflops(model, imgsz: int, k: int | None) -> float:
    """All FLOPs of one eval forward pass (convs and attention matmuls), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from pst_yolo.runtime import set_topk

    model.eval()
    if k is not None:
        set_topk(model, k)
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def ultralytics_gflops(model, imgsz: int) -> float:
    from ultralytics.utils.torch_utils import get_flops

    return get_flops(model, imgsz)


def rel(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{100 * (ours / paper - 1):+.1f}%"


def measure(entry, with_topk: bool = True) -> dict:
    """Parameters and the three FLOP figures of one zoo entry (a fresh model; k is restored to 8 afterwards)."""
    model = build(entry.name)
    row = {"params": count_params(model) / 1e6, "ultralytics": ultralytics_gflops(model, entry.imgsz)}
    if with_topk:
        row["full_k8"] = full_gflops(model, entry.imgsz, 8)
        row["full_k0"] = full_gflops(model, entry.imgsz, 0)
    else:
        row["full_k8"] = row["full_k0"] = full_gflops(model, entry.imgsz, None)
    if entry.task == "classify":
        row["ultralytics_640"] = ultralytics_gflops(model, 640)
    return row


def table(entries, with_topk=True) -> str:
    head = (
        "| model | imgsz | paper row | params (M) | paper (M) | Δ params | GFLOPs Ultralytics | GFLOPs full k=8 | "
        "GFLOPs full k=0 | paper GFLOPs | Δ Ultralytics | Δ full k=8 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for e in entries:
        r = measure(e, with_topk)
        lines.append(
            f"| {e.name} | {e.imgsz} | {e.paper or '-'} | {r['params']:.2f} | {e.params_m or '-'} | "
            f"{rel(r['params'], e.params_m)} | {r['ultralytics']:.1f} | {r['full_k8']:.1f} | {r['full_k0']:.1f} | "
            f"{e.gflops or '-'} | {rel(r['ultralytics'], e.gflops)} | {rel(r['full_k8'], e.gflops)} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)  # progress
    return head + "\n".join(lines) + "\n"


def cls_640_table(entries) -> str:
    """Classification rows counted at 640 (Ultralytics' default imgsz), where the paper's Table 3 GFLOPs land."""
    out = "| model | GFLOPs Ultralytics @224 | GFLOPs Ultralytics @640 | paper GFLOPs |\n|---|---|---|---|\n"
    for e in entries:
        if e.task != "classify":
            continue
        m = build(e.name)
        out += f"| {e.name} | {ultralytics_gflops(m, 224):.1f} | {ultralytics_gflops(m, 640):.1f} | {e.gflops or '-'} |\n"
    return out


def closed_form_report() -> str:
    """What the paper's own PST formula predicts for YOLO11-PST-N / YOLO12-PST-N from the stock N models."""
    from pst_yolo.modules import PST
    from pst_yolo.zoo import paper_closed_form

    lines = ["| model | stock (M) | replaced blocks (M) | PST, ours (M) | PST, paper formula C'=c2 (M) | "
             "PST, paper formula C'=c_ (M) | stock - replaced + formula (C'=c2) | paper (M) |",
             "|---|---|---|---|---|---|---|---|"]
    for stock, ours, idx, paper in (("yolo11n.yaml", "yolo11n-pst.yaml", (13, 16), 2.8),
                                    ("yolo12n.yaml", "yolo12n-pst.yaml", (11, 14), 4.3)):
        s, o = build(stock), build(ours)
        replaced = sum(count_params(s.model[i]) for i in idx) / 1e6
        psts = [o.model[i] for i in idx]
        assert all(isinstance(p, PST) for p in psts), f"{ours}: layers {idx} are not PST"
        ours_pst = sum(count_params(p) for p in psts) / 1e6
        f_c2 = f_c_ = 0
        for p in psts:
            c1, c_up = p.cv1.conv.in_channels, p.cvup.conv.in_channels
            c2, c_ = p.cv2.conv.out_channels, p.cv1.conv.out_channels
            f_c2 += paper_closed_form(c1, c_up, c2)
            f_c_ += paper_closed_form(c1, c_up, c_)
        total = count_params(s) / 1e6
        lines.append(f"| {ours} | {total:.3f} | {replaced:.3f} | {ours_pst:.3f} | {f_c2 / 1e6:.3f} | {f_c_ / 1e6:.3f} | "
                     f"{total - replaced + f_c2 / 1e6:.3f} | {paper} |")
    return "\n".join(lines) + "\n"


COST = (("yolo11n.yaml", None), ("yolo11n-pst.yaml", "yolo11n.yaml"), ("yolo11n-pst-res.yaml", "yolo11n.yaml"),
        ("yolo12n.yaml", None), ("yolo12n-pst.yaml", "yolo12n.yaml"),
        ("yolo26n.yaml", None), ("yolo26n-pst.yaml", "yolo26n.yaml"), ("yolo26n-pst-res.yaml", "yolo26n.yaml"))


def cost_table(sizes=(640, 1280)) -> str:
    """Detection cost next to the stock model each PST model replaces: parameters, and GFLOPs at each size without
    the attention matmuls (Ultralytics' counter) and with them (full, k=0 and k=8)."""
    cols = " | ".join(f"GFLOPs {s} Ultralytics | full k=0 | full k=8 | k=8 vs stock" for s in sizes)
    lines = [f"| model | params (M) | vs stock | {cols} |", "|---|---:|---:|" + "---:|" * (4 * len(sizes))]
    measured = {}
    for name, stock in COST:
        model = build(name)
        row = {"params": count_params(model) / 1e6}
        for size in sizes:
            row[size] = (ultralytics_gflops(model, size), full_gflops(model, size, 0 if stock else None),
                         full_gflops(model, size, 8 if stock else None))
        measured[name] = row
        base = measured.get(stock)
        cells = [f"{row['params']:.2f}", f"{row['params'] / base['params']:.2f}" if base else ""]
        for size in sizes:
            u, k0, k8 = row[size]
            cells += [f"{u:.1f}", f"{k0:.1f}", f"{k8:.1f}", f"{k8 / base[size][2]:.2f}" if base else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def parser():
    """The command line of ``pst-yolo models``."""
    ap = argparse.ArgumentParser(prog="pst-yolo models", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names to measure (default: all shipped)")
    ap.add_argument("--baselines", action="store_true", help="also measure the stock Ultralytics baselines")
    ap.add_argument("--closed-form", action="store_true", help="also print the paper's closed-form PST counts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--cost", action="store_true", help="only the detection cost table at 640 and 1280 px, PST vs stock")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # explicit attention matmuls: FlopCounterMode counts them, but not SDPA's CPU flash kernel (0 FLOPs in torch 2.14)
    os.environ.setdefault("PST_ATTN", "reference")
    import pst_yolo.integration as integration
    from pst_yolo.zoo import BASELINES, MODELS

    integration.register()
    if args.cost:
        print("## Detection cost at 640 and 1280 px, PST vs the stock model it replaces\n")
        print(cost_table())
        return
    models = [m for m in MODELS if not args.only or m.name in args.only]
    if args.only and len(models) != len(args.only):
        known = ", ".join(m.name for m in MODELS)
        raise SystemExit(f"model_table.py: unknown --only name(s) {sorted(set(args.only) - {m.name for m in models})}; "
                         f"shipped: {known}")
    print("## Shipped PST models\n")
    print(table(models))
    print("## Classification GFLOPs at 224 and 640\n")
    print(cls_640_table(models))
    if args.baselines:
        print("## Stock Ultralytics baselines (paper Tables 2-3)\n")
        print(table(BASELINES, with_topk=False))
    if args.closed_form:
        print("## N rows: the paper's closed-form PST parameter count\n")
        print(closed_form_report())


if __name__ == "__main__":  # the same as `pst-yolo models`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["models", *sys.argv[1:]]))
