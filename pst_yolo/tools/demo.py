"""The main job: demo data -> train the stock yolo11n, the recommended PST model (``pst_yolo.zoo.recommended()``) and
the paper's layout (yolo11n-pst) side by side (stock `yolo train`, same settings and seed) -> validate PST coarse (k=0)
vs fine (k=8) -> ONNX export of the recommended model -> summary table.

    pst-yolo demo                 # about 4-6 minutes on a 2-core CPU
    pst-yolo demo epochs=3        # smoke run

Everything runs offline on CPU, with a progress line per training epoch (bars on a terminal); the summary table is
printed at the end and saved as <out>/summary.md, the learning curves as <out>/curves.png. Ctrl-C stops the trainings;
the same command again resumes (finished trainings are reused).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pst_yolo.offline import seed_fonts, set_offline_env
from pst_yolo.progress import Progress


def parser():
    """The command line of ``pst-yolo demo``."""
    ap = argparse.ArgumentParser(prog="pst-yolo demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/pst-demo", help="output folder")
    ap.add_argument("--model", default=None, help="PST model YAML name or path (default: pst_yolo.zoo.recommended())")
    ap.add_argument("--paper", default="yolo11n-pst.yaml", help="the paper's layout, trained beside it (empty: skip)")
    ap.add_argument("--stock", default="yolo11n.yaml", help="the stock model it replaces (empty: skip)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=256, help="generated training images")
    ap.add_argument("--n-val", type=int, default=200, help="generated validation images")
    ap.add_argument("--k", type=int, nargs="+", default=[0, 8], help="top-k values to validate")
    ap.add_argument("--no-export", action="store_true", help="skip the ONNX export step")
    return ap


def latency_ms(weights: Path, imgsz: int, k: int | None, runs: int = 30) -> float:
    """Median batch-1 forward time of the fused eval model (after warm-up), in milliseconds."""
    import statistics

    import torch
    from ultralytics import YOLO

    from pst_yolo.runtime import set_topk

    net = YOLO(str(weights)).model.float().fuse().eval()
    if k is not None:
        set_topk(net, k)
    x = torch.rand(1, 3, imgsz, imgsz)
    times = []
    with torch.inference_mode():
        for i in range(runs + 5):
            t = time.perf_counter()
            net(x)
            if i >= 5:
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def export_onnx(weights: Path, data: Path, imgsz: int) -> str:
    """Export with the stock exporter and check it runs in onnxruntime; returns a status line."""
    from pst_yolo.extras import MissingExtra, require

    try:
        require("onnxruntime", "the demo's ONNX step")
    except MissingExtra as e:
        return f"skipped ({e})"
    from ultralytics import YOLO

    t = time.perf_counter()
    path = YOLO(str(weights)).export(format="onnx", imgsz=imgsz, simplify=True)
    YOLO(path, task="detect").predict(str(data.parent / "images" / "val"), imgsz=imgsz, device="cpu", verbose=False)
    return f"{path} ({time.perf_counter() - t:.1f} s, runs in onnxruntime)"


def stored_choice(runs: dict) -> str:
    """What the trainer stored in each PST model's last.pt: the fine setting it chose and the fitness of both."""
    import torch

    from pst_yolo.training import setting_label

    parts = []
    for label, run in runs.items():
        info = torch.load(Path(run["dir"]) / "weights" / "last.pt", weights_only=False).get("pst_fine")
        if info:
            fit = ", ".join(f"{setting_label(n)} {v:.4f}" for n, v in info["fitness"].items())
            parts.append(f"{label} {setting_label(info.get('setting', str(info['k'])))} (validation fitness {fit})")
    return "Fine setting each PST checkpoint stores (chosen when training ended): " + ("; ".join(parts) or "none")


def main(argv=None):
    args = parser().parse_args(argv)
    out = Path(args.out)
    progress = Progress("pst-yolo demo")
    progress.say(f"generating {args.n_train} + {args.n_val} demo images at {args.imgsz} px into {out / 'data'}")
    set_offline_env()  # before Ultralytics is imported (here and in every `yolo` subprocess)
    seed_fonts()  # Ultralytics' dataset check would look for its plot font online otherwise
    from pst_yolo.compare import compare, summary_rows
    from pst_yolo.data import make_detection_dataset
    from pst_yolo.zoo import recommended

    args.model = args.model or recommended()
    data = make_detection_dataset(out / "data", n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz)
    # the stock row first, the recommended PST model under it, the paper's layout last
    models = ([args.stock] if args.stock else []) + [args.model] + ([args.paper] if args.paper else [])
    # The Ultralytics defaults a user would run, with a short warm-up and mosaic off for the last 5 of 25 epochs.
    result = compare(models, data, args.epochs, args.imgsz, args.batch, seeds=(args.seed,), ks=args.k, out=out,
                     jobs=len(models), weights="last", progress=progress, warmup_epochs=1, close_mosaic=5)
    runs = {r["label"]: r for r in result["runs"]}
    rows = summary_rows(result)
    base = next((r["m1"][0] for r in rows if r["model"] == result["baseline"]), None)

    lines = [
        f"## pst-yolo demo: {args.epochs} epochs at {args.imgsz}px on generated data (CPU, seed {args.seed})",
        "",
        "| model | fine attention | mAP50 | mAP50-95 | vs stock | latency (ms/img, batch 1, median) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        weights = Path(runs[r["model"]]["dir"]) / "weights" / "last.pt"
        fine = "-" if r["k"] is None else ("off (k=0)" if r["k"] == 0 else f"on (k={r['k']})")
        ratio = f"{r['m1'][0] / base:.2f}" if base else "-"
        progress.say(f"timing {r['model']} ({fine})")
        ms = latency_ms(weights, args.imgsz, r["k"])
        lines.append(f"| {r['model']} | {fine} | {r['m2'][0]:.4f} | {r['m1'][0]:.4f} | {ratio} | {ms:.2f} |")
    lines += ["", stored_choice(runs)]
    pst_weights = Path(runs[Path(args.model).stem]["dir"]) / "weights" / "last.pt"
    if not args.no_export:
        progress.say(f"exporting {pst_weights} to ONNX and predicting with it in onnxruntime")
    onnx = "skipped (--no-export)" if args.no_export else export_onnx(pst_weights, data, args.imgsz)
    lines += ["", f"PST checkpoint: {pst_weights}", f"ONNX: {onnx}", f"learning curves: {out / 'curves.png'}"]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":  # the same as `pst-yolo demo`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["demo", *sys.argv[1:]]))
