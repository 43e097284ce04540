"""The main job: demo data -> train yolo11n-pst (stock `yolo train`) -> validate coarse (k=0) vs fine (k=8) -> ONNX.

    python scripts/demo.py                 # about 5-10 minutes on a 2-core CPU
    python scripts/demo.py --epochs 3      # smoke run

Everything runs offline on CPU; the summary table is printed at the end and saved as <out>/summary.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/pst-demo", help="output folder")
    ap.add_argument("--model", default="yolo11n-pst.yaml", help="model YAML name or path")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=256, help="generated training images")
    ap.add_argument("--n-val", type=int, default=48, help="generated validation images")
    ap.add_argument("--k", type=int, nargs="+", default=[0, 8], help="top-k values to validate")
    ap.add_argument("--no-export", action="store_true", help="skip the ONNX export step")
    return ap.parse_args(argv)


def train(args, data: Path, out: Path) -> Path:
    """Train with the stock `yolo` command in a subprocess, exactly as a user would."""
    yolo = shutil.which("yolo")
    if yolo is None:
        sys.exit("the `yolo` command is not on PATH: install the project first (pip install -e .)")
    cmd = [yolo, "train", f"model={args.model}", f"data={data}", f"epochs={args.epochs}", f"imgsz={args.imgsz}",
           f"batch={args.batch}", "device=cpu", "workers=0", "seed=0", "warmup_epochs=1", "close_mosaic=5",
           "plots=False", f"project={out.resolve()}", "name=train", "exist_ok=True"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out / "train" / "weights" / "best.pt"


def validate(weights: Path, data: Path, args, k: int) -> dict:
    """Validate ``weights`` with fine attention set to ``k`` regions per head."""
    from ultralytics import YOLO

    import pst_yolo

    model = YOLO(str(weights))
    pst_yolo.set_topk(model, k)
    m = model.val(data=str(data), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False, verbose=False)
    return {"k": k, "mAP50": m.box.map50, "mAP50-95": m.box.map, "ms/img": latency_ms(model, args.imgsz)}


def latency_ms(model, imgsz: int, runs: int = 30) -> float:
    """Median batch-1 forward time of the fused eval model (after warm-up), in milliseconds."""
    import statistics

    import torch

    net = model.model.float().eval()
    x = torch.rand(1, 3, imgsz, imgsz)
    times = []
    with torch.inference_mode():
        for i in range(runs + 5):
            t = time.perf_counter()
            net(x)
            if i >= 5:
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def export_onnx(weights: Path, data: Path, args) -> str:
    """Export with the stock exporter and check it runs in onnxruntime; returns a status line."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "skipped (pip install 'pst-yolo[export]')"
    from ultralytics import YOLO

    t = time.perf_counter()
    path = YOLO(str(weights)).export(format="onnx", imgsz=args.imgsz, simplify=True)
    YOLO(path, task="detect").predict(str(data.parent / "images" / "val"), imgsz=args.imgsz, device="cpu", verbose=False)
    return f"{path} ({time.perf_counter() - t:.1f} s, runs in onnxruntime)"


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    from pst_yolo.data import make_detection_dataset

    data = make_detection_dataset(out / "data" / "detect", n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz)
    best = train(args, data, out)
    rows = [validate(best, data, args, k) for k in args.k]
    onnx = "skipped (--no-export)" if args.no_export else export_onnx(best, data, args)

    lines = [
        f"## pst-yolo demo: {args.model}, {args.epochs} epochs at {args.imgsz}px on generated data (CPU)",
        "",
        "| fine attention | mAP50 | mAP50-95 | latency (ms/img, batch 1, median) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        label = "off (k=0, coarse only)" if r["k"] == 0 else f"on (k={r['k']})"
        lines.append(f"| {label} | {r['mAP50']:.4f} | {r['mAP50-95']:.4f} | {r['ms/img']:.2f} |")
    lines += ["", f"checkpoint: {best}", f"ONNX: {onnx}"]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
