"""Where onnxruntime spends a forward: its own profiler (``SessionOptions.enable_profiling``), node times summed per
op type, inside the PST layers and in the rest of the model, for several models side by side.

    pst-yolo ort-profile yolo11n.yaml yolo11n-pst.yaml:0 yolo11n-pst.yaml:8 --imgsz 640 --threads 2
    pst-yolo ort-profile a.onnx b.onnx --runs 50

A model is an ONNX file or ``<yaml>[:<k>]``, exported here like ``yolo export format=onnx imgsz=<imgsz>`` (static
shape, onnxslim on) with top-k ``k``. Times are per forward (mean over ``--runs`` after ``--warmup``), in ms; the
"rest" rows are everything outside the PST layers (backbone, other neck blocks, Detect).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def parser():
    """The command line of ``pst-yolo ort-profile``."""
    p = argparse.ArgumentParser(prog="pst-yolo ort-profile", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="ONNX files or <yaml>[:<k>] specs")
    p.add_argument("--imgsz", type=int, default=640, help="export size for <yaml> specs")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads")
    p.add_argument("--top", type=int, default=8, help="op types listed per group")
    p.add_argument("--workdir", default=None, help="where exports and traces go (default: a temp folder)")
    return p


def onnx_file(spec: str, imgsz: int, workdir: Path) -> str:
    if spec.endswith(".onnx"):
        return spec
    from pst_yolo.tools.bench import export_onnx

    yaml, _, k = spec.partition(":")
    name = f"{Path(yaml).stem}{'_k' + k if k else ''}_{imgsz}.onnx"
    return export_onnx(yaml, int(k) if k else None, imgsz, str(workdir / name))


def profile(path: str, args, workdir: Path) -> tuple[dict, float]:
    """``({(group, op_type): ms per forward}, total ms per forward)`` from onnxruntime's trace of ``args.runs`` runs."""
    import onnx
    import onnxruntime as ort

    from pst_yolo.export import pst_layers

    prefixes = tuple(f"/model.{i}/" for i in pst_layers(onnx.load(path, load_external_data=False)))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    for _ in range(args.warmup):
        sess.run(None, {inp.name: x})
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / Path(path).stem)
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(args.runs + 1):  # the first profiled run includes session warm-up: dropped below
        sess.run(None, {inp.name: x})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in trace if e.get("name") == "model_run"][1:]
    start = runs[0]["ts"] if runs else 0
    sums = collections.Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            node = e["name"][: -len("_kernel_time")]
            group = "PST" if node.startswith(prefixes) else "rest"
            sums[group, e["args"]["op_name"]] += e["dur"]
    total = sum(e["dur"] for e in runs) / len(runs) / 1e3
    return {key: us / len(runs) / 1e3 for key, us in sums.items()}, total


def main(argv=None):
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = {spec: profile(onnx_file(spec, args.imgsz, workdir), args, workdir) for spec in args.models}
    names = list(results)
    print(f"onnxruntime profile, {args.threads} threads, mean over {args.runs} runs, ms per forward\n")
    print("| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    print("| whole run (model_run) | " + " | ".join(f"{results[n][1]:.1f}" for n in names) + " |")
    for group in ("rest", "PST"):
        per = {n: {op: ms for (g, op), ms in results[n][0].items() if g == group} for n in names}
        print(f"| **{group}, all nodes** | " + " | ".join(f"**{sum(per[n].values()):.1f}**" for n in names) + " |")
        ops = collections.Counter()
        for n in names:
            ops.update(per[n])
        for op, _ in ops.most_common(args.top):
            print(f"| {group}: {op} | " + " | ".join(f"{per[n].get(op, 0.0):.1f}" for n in names) + " |")


if __name__ == "__main__":  # the same as `pst-yolo ort-profile`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["ort-profile", *sys.argv[1:]]))
