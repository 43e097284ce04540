#!/usr/bin/env python
"""Every Ultralytics export format, stock vs PST (fine attention on and off), exported and validated the way a user
would: ``yolo export model=... format=F`` (a fresh process each), then ``YOLO(exported).val()`` where Ultralytics runs
the format on a CPU, and a parity check of the raw outputs against PyTorch on the same images.

    pst-yolo demo                                       # the main job's checkpoints (or pass your own)
    pst-yolo export-matrix                              # every format whose toolchain is installed
    pst-yolo export-matrix --formats ncnn coreml --out runs/matrix-ncnn
    pst-yolo export-matrix --stock s.pt --pst p.pt --data my.yaml --imgsz 640
    pst-yolo export-matrix --int8 --formats onnx openvino mnn --val-data held_out.yaml  # + the INT8 table

Rows: stock, PST k=8 (the checkpoint's default fine attention) and PST k=0 (``PST_TOPK=0``), per format. Columns:
the exported size, mAP50-95 / mAP50 (the PyTorch figure of the same row in the header row), the largest raw-output
difference to PyTorch with the same k over the parity images ("vs pt"), for PST k=8 also to the PyTorch k=0 output
("vs k=0": a carried fine branch stays closer to k=8 than to k=0), and the fine-attention ops the file carries
(``pst_yolo.formats``: ``graph`` = TopK/Gather, ``portable`` = max-and-mask rounds and one-hot MatMuls).
Formats whose toolchain is missing are listed with the extra that installs it.

``--int8`` adds a second table for the formats with an INT8 export (``INT8``): stock and PST k=8 exported with
``int8=True data=...`` (``--data``'s validation images calibrate, Ultralytics' default split; ``--val-data``
validates every row on other images), validated on the same images as the FP32 rows, the drop (INT8 - FP32
mAP50-95), file sizes, and the latency of the four files of a format (stock and PST, FP32 and INT8) timed interleaved
in one process, with the PST / stock ratio at each precision and their quotient. Writes <out>/matrix.md and
<out>/matrix.json; ``--append`` merges rows into an existing matrix.json (toolchains that need their own environment:
TensorFlow, PaddlePaddle; see docs/deployment.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pst_yolo.offline import seed_fonts, set_offline_env

set_offline_env()

# format -> (modules its toolchain needs, pst-yolo extra, runs on a Linux CPU in Ultralytics, distributions to report)
FORMATS = {
    "torchscript": ((), None, True, ("torch",)),
    "onnx": (("onnx", "onnxruntime"), "export", True, ("onnx", "onnxruntime")),
    "openvino": (("openvino",), "openvino", True, ("openvino",)),
    "mnn": (("MNN", "onnx"), "mnn", True, ("MNN",)),
    "ncnn": (("ncnn", "pnnx"), "ncnn", True, ("ncnn", "pnnx")),
    "coreml": (("coremltools",), "coreml", False, ("coremltools",)),
    "executorch": (("executorch",), "executorch", True, ("executorch",)),
    "tflite": (("litert_torch", "ai_edge_litert"), "litert", True, ("litert-torch", "ai-edge-litert")),
    "saved_model": (("tensorflow", "onnx2tf"), "tensorflow", True, ("tensorflow", "onnx2tf")),
    "paddle": (("paddle", "x2paddle"), "paddle", True, ("paddlepaddle", "x2paddle")),
}
PARITY_IMAGES = 8
# formats with an INT8 export in Ultralytics whose quantizer runs on a CPU; what it rounds
INT8 = {"onnx": "int8 weights and activations (onnxruntime static)", "openvino": "int8 weights and activations (NNCF)",
        "mnn": "int8 weights", "coreml": "8-bit palettized weights", "tflite": "int8 weights and activations",
        "saved_model": "int8 weights and activations (onnx2tf)"}
LATENCY_RUNS = 30
# issue #36's INT8 targets: PST's INT8 loss at most stock's + this; its INT8 latency ratio to stock within this factor
# of the FP32 ratio
INT8_LOSS_MARGIN, INT8_LATENCY_RATIO = 0.005, 1.05


def missing(fmt: str) -> list[str]:
    return [m for m in FORMATS[fmt][0] if importlib.util.find_spec(m) is None]


def versions(fmt: str) -> str:
    out = []
    for dist in FORMATS[fmt][3]:
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def yolo(*args, env=None, cwd=None, timeout=1800) -> subprocess.CompletedProcess:
    from pst_yolo.compare import yolo_command

    return subprocess.run([*yolo_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})})


def exported_path(weights: Path, fmt: str) -> Path:
    """Where ``yolo export`` writes ``weights`` in ``fmt`` (Ultralytics' naming)."""
    stem = weights.with_suffix("")
    return {
        "torchscript": weights.with_suffix(".torchscript"), "onnx": weights.with_suffix(".onnx"),
        "openvino": Path(f"{stem}_openvino_model"), "mnn": weights.with_suffix(".mnn"),
        "ncnn": Path(f"{stem}_ncnn_model"), "coreml": weights.with_suffix(".mlpackage"),
        "executorch": Path(f"{stem}_executorch_model"), "tflite": weights.with_suffix(".tflite"),
        "saved_model": Path(f"{stem}_saved_model"), "paddle": Path(f"{stem}_paddle_model"),
    }[fmt]


def size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# ------------------------------------------------------------------------------------ what the exported file carries
def fine_ops(path: Path, fmt: str) -> str:
    """The fine-attention ops found in an exported file (``pst_yolo.export.exported_op_counts``)."""
    from pst_yolo.export import exported_op_counts, fine_attention_summary

    try:
        ops = exported_op_counts(path, fmt)
    except Exception as e:  # an inspector's own dependency missing: say so, do not guess
        return f"not inspected ({type(e).__name__})"
    if ops is None:  # a file format this script cannot open (ExecuTorch's .pte): the form it was traced in
        from pst_yolo.formats import form_for

        return f"{form_for(fmt)[0]} (traced form; file not inspected)"
    return fine_attention_summary(ops)


# ------------------------------------------------------------------------------------------------ validation worker
def worker(args) -> None:
    """In its own process (one runtime per process): validate ``args.model`` and save raw outputs on the parity images;
    prints one JSON line."""
    import glob

    import cv2
    import numpy as np
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.autobackend import AutoBackend

    result = {}
    if args.latency:
        print("RESULT " + json.dumps(latency(args.latency.split(","), args.imgsz)))
        return
    if args.val:
        m = YOLO(args.model, task=args.task)
        # rect=False: exported models run at the fixed export size, so the PyTorch reference must too (a PyTorch val
        # defaults to rectangular batches, padded up to the next stride multiple plus half a stride: another size)
        r = m.val(data=args.data, imgsz=args.imgsz, batch=1, device="cpu", workers=0, plots=False, verbose=False,
                  rect=False, project=args.tmp, name="val", exist_ok=True)
        metric = r.seg if args.task == "segment" else r.pose if args.task == "pose" else r.box
        result.update(map=float(metric.map), map50=float(metric.map50))
    backend = AutoBackend(args.model, device=torch.device("cpu"), fuse=True)
    if args.k is not None:
        from pst_yolo.runtime import set_topk

        set_topk(backend.model, args.k)
    images = sorted(glob.glob(str(Path(args.images) / "*")))[:PARITY_IMAGES]
    outs = []
    for p in images:
        im = cv2.resize(cv2.imread(p), (args.imgsz, args.imgsz))[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None].float() / 255  # contiguous: NCNN,
        # MNN and ExecuTorch read the raw buffer
        y = backend(x)
        while isinstance(y, (list, tuple, dict)):  # the predictions (segmentation: + mask protos; .pt: + raw maps)
            y = next(iter(y.values())) if isinstance(y, dict) else y[0]
        outs.append(np.asarray(y.detach() if torch.is_tensor(y) else y, dtype=np.float32))
    np.save(args.raw, np.stack(outs))
    print("RESULT " + json.dumps(result))


def latency(models: list, imgsz: int, runs: int = LATENCY_RUNS) -> dict:
    """Median milliseconds per image of each exported file, one image at a time, timed interleaved (``pst-yolo bench``'s
    rounds) so that load on the machine falls on all of them alike."""
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    from pst_yolo.tools.bench import interleaved

    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    backends = [AutoBackend(m, device=torch.device("cpu"), fuse=True) for m in models]
    t = interleaved({i: (lambda b=b: b(x)) for i, b in enumerate(backends)}, runs, 3)
    return {"ms": [round(1000 * t[i], 3) for i in range(len(backends))]}


def run_worker(model, task, data, images, imgsz, k, raw: Path, val: bool, env=None) -> dict:
    cmd = ["--worker", str(model), "--task", task, "--data", str(data), "--images", str(images), "--imgsz", str(imgsz),
           "--raw", str(raw), "--tmp", str(raw.parent / "val")]
    cmd += ["--k", str(k)] if k is not None else []
    cmd += ["--val"] if val else []
    return _worker_result(cmd, env)


def run_latency(files: list, imgsz: int) -> list:
    return _worker_result(["--worker", "-", "--latency", ",".join(str(f) for f in files), "--imgsz", str(imgsz)])["ms"]


def _worker_result(args: list, env=None) -> dict:
    """Run this module's worker in its own process (one runtime per process); its RESULT line as a dict."""
    p = subprocess.run([sys.executable, "-m", "pst_yolo.tools.export_matrix", *args], capture_output=True, text=True,
                       timeout=3600, env={**os.environ, **(env or {})})
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise RuntimeError((p.stdout + p.stderr)[-1500:])
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------------------------------------------------- matrix
def rows_for(fmt, models, data, images, imgsz, task, out: Path, pt: dict) -> list[dict]:
    import numpy as np

    need = missing(fmt)
    if need:
        extra = FORMATS[fmt][1]
        return [{"format": fmt, "model": name, "status": f"toolchain not installed ({', '.join(need)}): "
                 f"pip install 'pst-yolo[{extra}]'"} for name in models]
    rows = []
    for name, (weights, k) in models.items():
        row, path = export_row(fmt, name, weights, k, out / fmt / name, task, data, images, imgsz)
        rows.append(row)
        if path is None:
            continue
        raw = np.load(out / fmt / name / "raw.npy")
        ref = pt[name]["raw"]
        if raw.shape == ref.shape:
            row["vs_pt"] = float(np.abs(raw - ref).max())
            if name == "pst k=8":
                row["vs_k0"] = float(np.abs(raw - pt["pst k=0"]["raw"]).max())
    return rows


def export_row(fmt, name, weights: Path, k, folder: Path, task, data, images, imgsz, int8_args=None):
    """``yolo export`` of a copy of ``weights`` (``PST_TOPK=k``) to ``fmt`` in a fresh ``folder`` (``int8_args``: with
    ``int8=True`` and these), validated where Ultralytics runs the format on a CPU, raw outputs in folder/raw.npy.
    Returns the row and the exported file (None where it was not validated: the row's status says why)."""
    row = {"format": fmt, "model": name, "versions": versions(fmt)}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    w = folder / weights.name
    shutil.copy(weights, w)
    env = {"PST_TOPK": str(k)} if k is not None else {}
    quantize = [] if int8_args is None else ["int8=True", *int8_args]
    what = f"export_matrix: {fmt}{' INT8' if quantize else ''} {name}"
    print(f"{what}: exporting ...", flush=True)  # a line per step: an export or a validation can take minutes
    t = time.perf_counter()
    p = yolo("export", f"model={w}", f"format={fmt}", *quantize, f"imgsz={imgsz}", env=env, cwd=folder)
    row["export_s"] = round(time.perf_counter() - t, 1)
    # an INT8 file's name differs per toolchain (_int8.onnx, _int8_openvino_model, .mnn): the exporter says where
    path = exported_path(w, fmt) if int8_args is None else _saved_path(p.stdout + p.stderr)
    if p.returncode or path is None or not path.exists():
        tail = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()][-3:]
        row["status"] = "export failed: " + " | ".join(tail)[-300:]
        return row, None
    ops = "-" if k is None else "none (k=0)" if k == 0 else fine_ops(path, fmt)
    row.update(size_mb=round(size_mb(path), 1), ops=ops)
    if not FORMATS[fmt][2]:
        row["status"] = "exported (no runtime on Linux)"
        return row, None
    print(f"{what}: exported in {row['export_s']} s, validating ...", flush=True)
    try:
        row.update(run_worker(path, task, data, images, imgsz, None, folder / "raw.npy", True, env))
    except RuntimeError as e:
        row["status"] = "runs? no: " + str(e).splitlines()[-1][:300]
        return row, None
    row["status"] = "ok"
    return row, path


def _saved_path(output: str) -> Path | None:
    """The file or folder Ultralytics' exporter reports ("Results saved to ...")."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    found = re.findall(r"Results saved to (.+)", text)
    return Path(found[-1].strip()) if found else None


def int8_rows(fmt, models, data, images, imgsz, task, out: Path, fp32: list, calibration) -> list[dict]:
    """INT8 rows of ``fmt`` for the stock and PST k=8 models (``--int8``), with the FP32 file of the same row for the
    drop, and one latency measurement of the four files."""
    import numpy as np

    if fmt not in INT8:
        return []
    need = missing(fmt)
    names = [n for n in models if n != "pst k=0"]
    if need:
        return [{"format": fmt, "model": n, "int8": True, "status": f"toolchain not installed ({', '.join(need)}): "
                 f"pip install 'pst-yolo[{FORMATS[fmt][1]}]'"} for n in names]
    by_name = {r["model"]: r for r in fp32 if r["format"] == fmt}
    rows, files = [], {}
    for name in names:
        weights, k = models[name]
        calibrate = [f"data={calibration}"] if calibrates(fmt) else []  # weight-only INT8 takes no data=
        row, path = export_row(fmt, name, weights, k, out / f"{fmt}-int8" / name, task, data, images, imgsz, calibrate)
        fp = by_name.get(name, {})
        row.update(int8=True, rounds=INT8[fmt], fp32_size_mb=fp.get("size_mb"))
        rows.append(row)
        if path is None:
            continue
        if "map" in fp:
            row["fp32_map"], row["drop"] = fp["map"], row["map"] - fp["map"]
        ref = out / fmt / name / "raw.npy"  # the FP32 file's outputs on the same images
        raw, ref = np.load(out / f"{fmt}-int8" / name / "raw.npy"), np.load(ref) if ref.exists() else None
        if ref is not None and ref.shape == raw.shape:
            row["vs_fp32"] = float(np.abs(raw - ref).max())
        files[name] = path
    fp_files = {n: exported_path(out / fmt / n / models[n][0].name, fmt) for n in names}
    if len(files) == len(names) and all(f.exists() for f in fp_files.values()):
        order = [fp_files[n] for n in names] + [files[n] for n in names]
        try:
            ms = run_latency(order, imgsz)
        except RuntimeError as e:
            rows[0]["latency_error"] = str(e).splitlines()[-1][:300]
        else:
            for i, r in enumerate(rows):
                r["fp32_ms"], r["int8_ms"] = ms[i], ms[len(names) + i]
    return rows


def calibrates(fmt: str) -> bool:
    """Whether Ultralytics' ``fmt`` export takes calibration ``data=`` (static INT8) or refuses it (weight-only)."""
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    names = list(table["Argument"])
    fmt = fmt if fmt in names else {"tflite": "litert"}.get(fmt, fmt)  # the name before Ultralytics 8.4's LiteRT
    return fmt not in names or "data" in table["Arguments"][names.index(fmt)]


def int8_markdown(rows: list[dict]) -> str:
    """The INT8 table and, per format, PST's drop against stock's and the latency ratios."""
    lines = ["| format | model | rounds | size FP32 / INT8 (MB) | mAP50-95 FP32 | INT8 | INT8 - FP32 | "
             "max diff vs FP32 file | FP32 ms | INT8 ms | fine attention in the file | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        def f(key, fmt="{:.4f}"):
            return fmt.format(r[key]) if r.get(key) is not None else ""

        size = f"{f('fp32_size_mb', '{:.1f}')} / {f('size_mb', '{:.1f}')}" if "size_mb" in r else ""
        lines.append(f"| {r['format']} | {r['model']} | {r.get('rounds', '')} | {size} | {f('fp32_map')} | "
                     f"{f('map')} | {f('drop', '{:+.4f}')} | {f('vs_fp32', '{:.2g}')} | {f('fp32_ms', '{:.2f}')} | "
                     f"{f('int8_ms', '{:.2f}')} | {r.get('ops', '')} | {r.get('status', '')} |")
    summary = []
    for fmt in dict.fromkeys(r["format"] for r in rows):
        s, p = ({r["model"]: r for r in rows if r["format"] == fmt}.get(n, {}) for n in ("stock", "pst k=8"))
        parts = []
        if "drop" in s and "drop" in p:  # a loss is FP32 - INT8: positive where INT8 is worse
            extra = s["drop"] - p["drop"]
            parts.append(f"INT8 loss PST {-p['drop']:+.4f}, stock {-s['drop']:+.4f}, PST - stock {extra:+.4f} "
                         f"(target <= +{INT8_LOSS_MARGIN}: {'met' if extra <= INT8_LOSS_MARGIN else 'MISSED'})")
        if all(r.get(key) for r in (s, p) for key in ("fp32_ms", "int8_ms")):
            r32, r8 = p["fp32_ms"] / s["fp32_ms"], p["int8_ms"] / s["int8_ms"]
            parts.append(f"latency PST / stock FP32 {r32:.2f}, INT8 {r8:.2f}, INT8 / FP32 ratio {r8 / r32:.2f} "
                         f"(target <= {INT8_LATENCY_RATIO}: {'met' if r8 / r32 <= INT8_LATENCY_RATIO else 'MISSED'})")
        if parts:
            summary.append(f"- {fmt}: " + "; ".join(parts))
    return "\n".join(lines + [""] + summary) + "\n"


def pytorch_reference(models, task, data, images, imgsz, out: Path) -> dict:
    import numpy as np

    ref = {}
    for name, (weights, k) in models.items():
        folder = out / "pytorch" / name
        folder.mkdir(parents=True, exist_ok=True)
        env = {"PST_TOPK": str(k)} if k is not None else {}  # validated at that k, as the exported file is
        res = run_worker(weights, task, data, images, imgsz, k, folder / "raw.npy", True, env)
        ref[name] = {**res, "raw": np.load(folder / "raw.npy")}
    return ref


def markdown(rows: list[dict], pt: dict, header: str) -> str:
    lines = [header, "",
             "| format | toolchain | model | size (MB) | mAP50-95 | mAP50 | max diff vs PyTorch | fine attention in the file | status |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for name, r in pt.items():
        lines.append(f"| PyTorch | torch | {name} | | {r['map']:.4f} | {r['map50']:.4f} | | | reference |")
    for r in rows:
        diff = ""
        if "vs_pt" in r:
            diff = f"{r['vs_pt']:.2g}" + (f" (vs k=0: {r['vs_k0']:.2g})" if "vs_k0" in r else "")
        mp = f"{r['map']:.4f}" if "map" in r else ""
        m50 = f"{r['map50']:.4f}" if "map50" in r else ""
        size = f"{r['size_mb']:.1f}" if "size_mb" in r else ""
        lines.append(f"| {r['format']} | {r.get('versions', '')} | {r['model']} | {size} | {mp} | {m50} | {diff} | "
                     f"{r.get('ops', '')} | {r.get('status', '')} |")
    return "\n".join(lines) + "\n"


def parser():
    """The command line of ``pst-yolo export-matrix``."""
    ap = argparse.ArgumentParser(prog="pst-yolo export-matrix", description=__doc__.splitlines()[0])
    ap.add_argument("--stock", default="runs/pst-demo/runs/yolo11n-s0/weights/last.pt")
    ap.add_argument("--pst", default="runs/pst-demo/runs/yolo11n-pst-s0/weights/last.pt")
    ap.add_argument("--data", default="runs/pst-demo/data/data.yaml")
    ap.add_argument("--val-data", default=None, help="validate on this data set (default: --data, which also "
                    "calibrates INT8 exports)")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--out", default="runs/export-matrix")
    ap.add_argument("--append", action="store_true", help="merge into an existing <out>/matrix.json")
    ap.add_argument("--int8", action="store_true", help="add INT8 rows for the formats with an INT8 export")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    for hidden in ("--task", "--images", "--raw", "--tmp"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--val", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--latency", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.worker:
        args.model = args.worker
        return worker(args)

    seed_fonts()
    from ultralytics import YOLO

    stock, pst, calibration = (Path(p).resolve() for p in (args.stock, args.pst, args.data))
    data = Path(args.val_data or args.data).resolve()
    for p, what in ((stock, "--stock"), (pst, "--pst"), (calibration, "--data"), (data, "--val-data")):
        if not p.exists():
            raise SystemExit(f"export_matrix: {what} {p} does not exist (run pst-yolo demo first, or pass {what})")
    task = YOLO(str(pst)).task
    images = data.parent / "images" / "val"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    models = {"stock": (stock, None), "pst k=8": (pst, 8), "pst k=0": (pst, 0)}
    pt = pytorch_reference(models, task, data, images, args.imgsz, out)
    rows, rows8 = [], []
    for fmt in args.formats:
        print(f"export_matrix: {fmt} ...", flush=True)
        rows += rows_for(fmt, models, data, images, args.imgsz, task, out, pt)
        if args.int8:
            print(f"export_matrix: {fmt} INT8 ...", flush=True)
            rows8 += int8_rows(fmt, models, data, images, args.imgsz, task, out, rows, calibration)
    store = out / "matrix.json"
    old = json.loads(store.read_text()) if args.append and store.is_file() else None
    if old is not None:
        done = {(r["format"], r["model"]) for r in rows if not r.get("status", "").startswith("toolchain not")}
        rows = [r for r in old["rows"] if (r["format"], r["model"]) not in done] + \
               [r for r in rows if (r["format"], r["model"]) in done or
                (r["format"], r["model"]) not in {(o["format"], o["model"]) for o in old["rows"]}]
        rows.sort(key=lambda r: (list(FORMATS).index(r["format"]), list(models).index(r["model"])))
    pt_json = {k: {m: v for m, v in r.items() if m != "raw"} for k, r in pt.items()}
    import torch
    import ultralytics

    header = (f"Export matrix: {task}, imgsz {args.imgsz}, {stock.name} vs {pst.name} (k=8 / k=0), data {data}; "
              f"ultralytics {ultralytics.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    if old is not None:  # INT8 rows of the formats this run did not quantize stay
        rows8 = [r for r in old.get("int8_rows", []) if not args.int8 or r["format"] not in args.formats] + rows8
    store.write_text(json.dumps({"header": header, "pytorch": pt_json, "rows": rows, "int8_rows": rows8}, indent=1))
    text = markdown(rows, pt_json, header)
    if rows8:
        text += "\nINT8 (`--int8`; calibrated on " + str(calibration) + "):\n\n" + int8_markdown(rows8)
    (out / "matrix.md").write_text(text)
    print(text)


if __name__ == "__main__":  # the same as `pst-yolo export-matrix`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["export-matrix", *sys.argv[1:]]))
