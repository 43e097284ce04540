"""The measurements behind docs/performance.md's "What was tried after that" (the joint fusion's export cost).

    python docs/performance/joint_cost.py latency --budgets 4194304 2097152 524288   # k8/k0, add/k0 per chunk size
    python docs/performance/joint_cost.py ov-profile                                  # OpenVINO time per node type
    python docs/performance/joint_cost.py topk                                        # TopK(16) vs Softmax, one chunk
    python docs/performance/joint_cost.py risk CKPT IMAGES --imgsz 640                # queries at risk per PSA layer

Random-weight yolo11n-pst at 640 px for the first three (static exports like `yolo export format=onnx`), a trained
checkpoint for the last. Timings: 2 threads, the files of a runtime interleaved in one process (median of 40 runs).
"""

from __future__ import annotations

import argparse
import collections
import glob
import sys
from pathlib import Path

import numpy as np

SIZE = 640


def exports(workdir: Path, budget: int) -> dict:
    """k=0, k=8 joint, k=8 add of yolo11n-pst and stock yolo11n, exported with ``budget`` logits per chunk."""
    from pst_yolo import scoring
    from pst_yolo.tools import bench

    old, scoring.EXPORT_BUDGET = scoring.EXPORT_BUDGET, budget
    try:
        files = {}
        for label, yaml, k, fusion in [("k0", "yolo11n-pst.yaml", 0, None), ("k8", "yolo11n-pst.yaml", 8, None),
                                       ("add", "yolo11n-pst.yaml", 8, "add"), ("stock", "yolo11n.yaml", None, None)]:
            path = workdir / f"{budget}_{label}.onnx"
            if not path.exists():
                print(f"exporting {label} at {budget} logits per chunk ...", file=sys.stderr, flush=True)
                bench.export_onnx(yaml, k, SIZE, path, fusion)
            files[label] = str(path)
        return files
    finally:
        scoring.EXPORT_BUDGET = old


def runners(files: dict, runtime: str) -> dict:
    from pst_yolo.tools import bench

    x = np.random.rand(1, 3, SIZE, SIZE).astype(np.float32)
    if runtime == "onnxruntime":
        sessions = {label: bench.ort_session(p, 2) for label, p in files.items()}
        return {label: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for label, s in sessions.items()}
    import openvino as ov

    core = ov.Core()
    compiled = {label: core.compile_model(p, "CPU", {"INFERENCE_NUM_THREADS": 2}) for label, p in files.items()}
    return {label: (lambda c=c: c(x)) for label, c in compiled.items()}


def latency(args):
    from pst_yolo.tools import bench

    for runtime in ("onnxruntime", "openvino"):
        for b in args.budgets:  # one budget's files interleaved: about 30 s each, a line each
            print(f"timing {runtime}, {b} logits per chunk ...", file=sys.stderr, flush=True)
            t = bench.interleaved(runners(exports(args.workdir, b), runtime), 40, 3)
            k0, k8, add, stock = (t[label] for label in ("k0", "k8", "add", "stock"))
            print(f"{runtime} budget {b}: k0 {k0 * 1e3:.1f} ms, joint k8/k0 {k8 / k0:.3f}, add k8/k0 {add / k0:.3f}, "
                  f"joint k8/stock {k8 / stock:.3f}")


def ov_profile(args):
    import openvino as ov

    files = exports(args.workdir, args.budgets[0])
    x = np.random.rand(1, 3, SIZE, SIZE).astype(np.float32)
    for label in ("k0", "k8"):
        request = ov.Core().compile_model(files[label], "CPU", {"INFERENCE_NUM_THREADS": 2, "PERF_COUNT": True})
        request = request.create_infer_request()
        times, runs = collections.Counter(), 20
        for i in range(5 + runs):
            request.infer({0: x})
            for node in request.profiling_info if i >= 5 else ():
                if node.status == node.Status.EXECUTED:
                    where = "PST " if "/attn/" in node.node_name or "attn/" in node.node_name else ""
                    times[f"{where}{node.node_type}"] += node.real_time.total_seconds() * 1e3 / runs
        print(f"OpenVINO {label}: {sum(times.values()):.1f} ms;",
              ", ".join(f"{n} {v:.2f}" for n, v in times.most_common() if n.startswith("PST")))


def topk(args):
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper

    shape = [1, 2, 1280, 1600]  # one 2**22-logit chunk of the P3 fusion at 640 px
    x = np.random.randn(*shape).astype(np.float32) * 3
    graphs = {
        "TopK(16)": ([helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=-1)],
                     [helper.make_tensor("k", TensorProto.INT64, [1], [16])],
                     {"y": TensorProto.FLOAT, "i": TensorProto.INT64}),
        "Softmax": ([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [], {"y": TensorProto.FLOAT}),
    }
    for name, (nodes, inits, outs) in graphs.items():
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(o, t, None) for o, t in outs.items()], inits)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, {"x": x})
        t = time.perf_counter()
        for _ in range(20):
            sess.run(None, {"x": x})
        print(f"onnxruntime {name} over {shape}: {(time.perf_counter() - t) / 20 * 1e3:.2f} ms")


def risk(args):
    """Per PSA layer: the share of queries whose coarse attention puts more than half its mass on the keys the selection
    replaces, and the joint softmax's denominator relative to the coarse one (1 - replaced share + the fine tokens'
    share): a joint output composed from the coarse pass loses about eps / that ratio of its precision."""
    import math

    import torch
    from ultralytics import YOLO

    from pst_yolo.fine import gather, project_fine
    from pst_yolo.modules import PyramidSparseAttention
    from pst_yolo.runtime import set_topk
    from pst_yolo.selection import select_fine_tokens

    shares, ratios = collections.defaultdict(list), collections.defaultdict(list)
    original = PyramidSparseAttention.fine_branch

    def fine_branch(self, form, x, q, k, v, scores, coarse_hw, topk):
        logits = (q * self.scale) @ k.transpose(-2, -1)
        lse = logits.logsumexp(-1, keepdim=True)
        index, valid, coarse, refined = select_fine_tokens(scores, topk, self.threshold, coarse_hw[1], *x.shape[-2:],
                                                           True)
        chosen = torch.zeros_like(scores).scatter(-1, coarse, refined.to(scores.dtype))
        replaced = ((logits - lse).exp() * chosen.unsqueeze(-2)).sum(-1)
        kf, _ = project_fine(self, gather(x, index, self.heads))
        fine = ((q * self.scale) @ kf.transpose(-2, -1) - math.log(4) - lse).exp()
        ratio = 1 - replaced + (fine * valid.unsqueeze(-2)).sum(-1)
        shares[q.shape[-2]].append((replaced > 0.5).float().mean().item())
        ratios[q.shape[-2]].append(ratio.flatten())
        return original(self, form, x, q, k, v, scores, coarse_hw, topk)

    PyramidSparseAttention.fine_branch = fine_branch
    model = YOLO(args.ckpt)
    set_topk(model, 8)
    for f in sorted(glob.glob(f"{args.images}/*"))[: args.n]:
        model.predict(f, imgsz=args.imgsz, verbose=False)
    for n, s in shares.items():
        r = torch.cat(ratios[n])
        print(f"PSA over {n} queries at {args.imgsz} px, {len(s)} images: replaced share > 0.5 for {np.mean(s):.4f} of "
              f"the queries (max {max(s):.4f} in one image); joint / coarse denominator < 0.1 for "
              f"{(r < 0.1).float().mean():.4f}, smallest {r.min():.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["latency", "ov-profile", "topk", "risk"])
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("images", nargs="?")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1 << 22])
    ap.add_argument("--imgsz", type=int, default=SIZE)
    ap.add_argument("--n", type=int, default=20, help="images for `risk`")
    ap.add_argument("--workdir", type=Path, default=Path("joint-cost"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    {"latency": latency, "ov-profile": ov_profile, "topk": topk, "risk": risk}[args.what](args)


if __name__ == "__main__":
    main()
