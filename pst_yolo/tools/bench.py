"""pst-yolo benchmark: latency, peak memory and training cost of PST models vs stock YOLO, side by side.

Everything is measured in ONE process and interleaved (each round runs every model once, in a rotating order) so machine
noise hits all models alike; figures are medians, and the ratios are what to read. Models are built from YAML with
random weights (nothing downloads), fused and in eval like Ultralytics inference.

    pst-yolo bench --quick                 # smoke run (seconds to a minute)
    pst-yolo bench                         # full: 320/640/1280, PyTorch + onnxruntime + OpenVINO, op counts, memory,
                                           # training
    pst-yolo bench --sizes 640 --runs 30 --threads 4 --no-onnx

Peak memory: every (model, size, engine) runs in a fresh subprocess; after one warm-up forward the resident-set
high-water mark is reset (``/proc/self/clear_refs``), one forward runs, and the figure is ``VmHWM - VmRSS before``, the
peak extra resident memory of one inference. glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) and
onnxruntime's arena is off so freed buffers go back to the OS and the high-water mark tracks live tensors, not
allocator caches. Linux only; elsewhere the memory table is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = [  # label, yaml, topk (None = stock model), score strategy (pst_yolo.scoring; None = auto)
    ("yolo11n", "yolo11n.yaml", None, None),
    ("yolo11n-pst k=0", "yolo11n-pst.yaml", 0, None),
    ("yolo11n-pst k=8", "yolo11n-pst.yaml", 8, None),
    ("yolo11n-pst k=8 lse", "yolo11n-pst.yaml", 8, "lse"),
    ("yolo11n-pst k=8 add", "yolo11n-pst.yaml", 8, None),  # the paper's additive fusion (FUSION_OF)
    ("yolo12n", "yolo12n.yaml", None, None),
    ("yolo12n-pst k=0", "yolo12n-pst.yaml", 0, None),
    ("yolo12n-pst k=8", "yolo12n-pst.yaml", 8, None),
    # the recommended models (pst_yolo.zoo.recommended) and YOLO26
    ("yolo11n-pst-res k=0", "yolo11n-pst-res.yaml", 0, None),
    ("yolo11n-pst-res k=8", "yolo11n-pst-res.yaml", 8, None),
    ("yolo26n", "yolo26n.yaml", None, None),
    ("yolo26n-pst k=0", "yolo26n-pst.yaml", 0, None),
    ("yolo26n-pst k=8", "yolo26n-pst.yaml", 8, None),
    ("yolo26n-pst-res k=0", "yolo26n-pst-res.yaml", 0, None),
    ("yolo26n-pst-res k=8", "yolo26n-pst-res.yaml", 8, None),
]
# Rows whose PST layers use another fusion than their YAML's (``pst_yolo.runtime.set_fusion``; ``PST_FUSION`` in children).
FUSION_OF = {"yolo11n-pst k=8 add": "add"}
# The deployment targets, checked on every run that measures them: (what, engine, size, numerator label, denominator
# label, limit). Engines: "pytorch" / "onnx" / "openvino" latency, "onnx-mem" onnxruntime peak memory. The joint fusion keeps its
# exact second pass (issue #46's decision): k=8 / k=0 <= 1.20 for the paper's layout, <= 1.05 for the recommended
# model; the additive fusion stays the named latency form.
TARGETS = [
    ("onnxruntime peak memory, PST k=8 / stock", "onnx-mem", 1280, "yolo11n-pst k=8", "yolo11n", 1.5),
    ("onnxruntime latency, k=8 / k=0 (joint, paper layout)", "onnx", 640, "yolo11n-pst k=8", "yolo11n-pst k=0", 1.20),
    ("OpenVINO latency, k=8 / k=0 (joint, paper layout)", "openvino", 640, "yolo11n-pst k=8", "yolo11n-pst k=0", 1.20),
    ("onnxruntime latency, k=8 / k=0 (joint, recommended)", "onnx", 640, "yolo11n-pst-res k=8", "yolo11n-pst-res k=0",
     1.05),
    ("OpenVINO latency, k=8 / k=0 (joint, recommended)", "openvino", 640, "yolo11n-pst-res k=8", "yolo11n-pst-res k=0",
     1.05),
    ("onnxruntime latency, k=8 / k=0 (add)", "onnx", 640, "yolo11n-pst k=8 add", "yolo11n-pst k=0", 1.10),
    ("OpenVINO latency, k=8 / k=0 (add)", "openvino", 640, "yolo11n-pst k=8 add", "yolo11n-pst k=0", 1.10),
    ("onnxruntime latency, PST k=8 / stock", "onnx", 640, "yolo11n-pst k=8", "yolo11n", 1.15),
    # PyTorch eager, where `yolo val` / `yolo predict` and the end-of-training fine choice run (issue #47)
    ("PyTorch eager latency, k=8 / k=0 (joint, paper layout)", "pytorch", 640, "yolo11n-pst k=8", "yolo11n-pst k=0",
     1.10),
    ("PyTorch eager latency, PST k=8 / stock (paper layout)", "pytorch", 640, "yolo11n-pst k=8", "yolo11n", 1.25),
    ("PyTorch eager latency, k=8 / k=0 (recommended)", "pytorch", 640, "yolo11n-pst-res k=8", "yolo11n-pst-res k=0",
     1.05),
    ("PyTorch eager latency, PST k=8 / stock (recommended)", "pytorch", 640, "yolo11n-pst-res k=8", "yolo11n", 1.10),
]
# A progress line at least this often (seconds) while a table is measured: a six-model run at 640 px otherwise printed
# nothing for minutes between its settings header and its first table.
REPORT_EVERY = 20.0
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def parser():
    """The command line of ``pst-yolo bench``."""
    p = argparse.ArgumentParser(prog="pst-yolo bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 320 only, few runs, small PSA sweep")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="square input sizes (default 320 640 1280)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per model at 640 (scaled by pixel count)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per model and size")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads (default: cores)")
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument("--no-openvino", action="store_true", help="skip OpenVINO (also skipped when it is not installed)")
    p.add_argument("--no-ops", action="store_true", help="skip the op / host-sync count table")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory table")
    p.add_argument("--no-train", action="store_true", help="skip the training step table")
    p.add_argument("--no-psa", action="store_true", help="skip the PSA-alone sweep")
    p.add_argument("--models", nargs="+", default=None, metavar="LABEL",
                   help=f"measure only these rows (labels of MODELS: {', '.join(m[0] for m in MODELS)})")
    p.add_argument("--workdir", default="/tmp/pst-bench", help="where ONNX files go")
    p.add_argument("--mem-child", nargs=4, metavar=("ENGINE", "YAML", "TOPK", "SIZE|ONNX"), help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    p = parser()
    a = p.parse_args(argv)
    a.sizes = a.sizes or ([320] if a.quick else [320, 640, 1280])
    a.runs = a.runs or (5 if a.quick else 20)
    a.threads = a.threads or os.cpu_count()
    unknown = sorted(set(a.models or ()) - {m[0] for m in MODELS})
    if unknown:
        p.error(f"--models: unknown label(s) {unknown}")
    return a


# ----------------------------------------------------------------------------------------------------------- models
def build(yaml, topk, fusion=None):
    """A fused eval DetectionModel, or None (with the reason) when the YAML does not exist on this branch."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from pst_yolo.runtime import set_fusion, set_topk

    try:
        with contextlib.redirect_stdout(None):
            model = DetectionModel(yaml, verbose=False)
    except (FileNotFoundError, KeyError) as e:
        return None, f"{yaml} not available ({type(e).__name__}: {e})"
    if topk is not None:
        set_topk(model, topk)
    if fusion is not None:
        set_fusion(model, fusion)
    model = model.fuse(verbose=False).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    return model, None


def runs_at(args, size):
    return max(3, round(args.runs * (640 / size) ** 2)) if size > 640 else args.runs


def say(msg: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"pst-yolo bench: {msg}", file=sys.stderr, flush=True)


def interleaved(fns: dict, runs: int, warmup: int, what: str | None = None) -> dict:
    """Median seconds of each callable; each round runs all of them, the order rotating round by round. ``what``:
    say so when timing starts, and how far it got every ``REPORT_EVERY`` seconds."""
    names = list(fns)
    if not names:
        return {}
    if what:
        say(f"{what}: timing {len(names)} models x {runs} rounds (+{warmup} warm-up)")
    last = time.monotonic()
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
        if what and time.monotonic() - last > REPORT_EVERY:
            last = time.monotonic()
            say(f"{what}: round {r + 1}/{runs}")
    return {n: statistics.median(v) for n, v in times.items()}


# -------------------------------------------------------------------------------------------------------- latency
def configured(yaml, topk, fusion=None):
    """``YOLO(yaml)`` at ``topk`` (None: as built) with its PST layers in ``fusion`` (None: as built)."""
    from ultralytics import YOLO

    from pst_yolo.runtime import set_fusion, set_topk

    y = YOLO(yaml)
    if topk is not None:
        set_topk(y, topk)
    if fusion is not None:
        set_fusion(y, fusion)
    return y


def export_onnx(yaml, topk, size, path, fusion=None):
    """Export exactly like ``yolo export model=<yaml> format=onnx imgsz=<size>`` (static shape, onnxslim on)."""
    y = configured(yaml, topk, fusion)
    with contextlib.redirect_stdout(None):
        out = y.export(format="onnx", imgsz=size, batch=1, simplify=True, device="cpu", verbose=False)
    return str(Path(out).rename(path))


def ort_session(path, threads, arena=True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def with_strategy(strategy, fn):
    """``fn`` run under a score strategy (``pst_yolo.scoring``; None = the process default, auto)."""
    from pst_yolo import scoring

    def run():
        scoring.set_strategy(strategy)
        try:
            return fn()
        finally:
            scoring.set_strategy(None)

    return run


def latency(args, models, labels_yaml, notes):
    import torch

    rows, onnx_paths = [], {}
    for size in args.sizes:
        x = torch.rand(1, 3, size, size)
        fns = {label: with_strategy(labels_yaml[label][2], lambda m=m: m(x)) for label, m in models.items()}
        with torch.inference_mode():
            pt = interleaved(fns, runs_at(args, size), args.warmup, f"PyTorch {size} px")
        ort_t, ov_t = {}, {}
        exported = [lab for lab in models if labels_yaml[lab][2] is None]  # a strategy changes no exported graph
        if not args.no_onnx:
            sessions = {}
            for label in exported:
                path = Path(args.workdir) / f"{label.replace(' ', '_').replace('=', '')}_{size}.onnx"
                try:
                    say(f"onnxruntime {size} px: exporting {label}")
                    onnx_paths[(label, size)] = export_onnx(*labels_yaml[label][:2], size, path, FUSION_OF.get(label))
                    sessions[label] = ort_session(onnx_paths[(label, size)], args.threads)
                except Exception as e:  # report, keep benchmarking the rest
                    notes.append(f"onnx export/load of {label} at {size} failed: {type(e).__name__}: {e}")
            xn = x.numpy()
            feeds = {label: (s, {s.get_inputs()[0].name: xn}) for label, s in sessions.items()}
            ort_t = interleaved(
                {label: (lambda s=s, f=f: s.run(None, f)) for label, (s, f) in feeds.items()},
                runs_at(args, size),
                args.warmup,
                f"onnxruntime {size} px",
            )
            del sessions, feeds
        if not args.no_openvino and openvino_available():
            compiled = {}
            for label in exported:
                try:
                    say(f"OpenVINO {size} px: exporting and compiling {label}")
                    compiled[label] = openvino_model(*labels_yaml[label][:2], size, args, FUSION_OF.get(label))
                except Exception as e:
                    notes.append(f"openvino export/compile of {label} at {size} failed: {type(e).__name__}: {e}")
            xn = x.numpy()
            ov_t = interleaved({lab: (lambda c=c: c(xn)) for lab, c in compiled.items()}, runs_at(args, size), args.warmup,
                               f"OpenVINO {size} px")
            del compiled
        for label in models:
            rows.append((label, size, pt[label], ort_t.get(label), ov_t.get(label)))
        print(f"  latency {size}: done", file=sys.stderr)
        gc.collect()
    return rows, onnx_paths


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_model(yaml, topk, size, args, fusion=None):
    """Export like ``yolo export format=openvino imgsz=<size>`` (fp32) and compile for the CPU; returns a callable."""
    import openvino as ov

    y = configured(yaml, topk, fusion)
    with contextlib.redirect_stdout(None):
        folder = y.export(format="openvino", imgsz=size, batch=1, device="cpu", verbose=False)
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"})
    compiled = core.compile_model(next(Path(folder).glob("*.xml")), "CPU")
    return lambda x: compiled(x)


def stock_of(label):
    return label.split("-pst")[0] if "-pst" in label else label


def k0_of(label):
    return label.split(" k=8")[0] + " k=0" if "k=8" in label else None


def fmt_ratio(a, b):
    return "" if a is None or not b else f"{a / b:.2f}"


def latency_table(rows, flops=None):
    """Latency per model and size in each engine, with its ratios to stock and to k=0; ``flops``
    ({(label, size): GFLOPs}) adds what the FLOP counter says those ratios would be if time followed FLOPs."""
    d = {(lab, s): r for lab, s, *r in rows}
    flops = flops or {}
    ms = lambda v: "" if v is None else f"{v * 1e3:.1f}"  # noqa: E731
    out = [
        "| model | size | PyTorch ms | vs stock | vs k=0 | onnxruntime ms | vs stock | vs k=0 | OpenVINO ms | vs stock "
        "| vs k=0 | GFLOPs | FLOPs vs stock | FLOPs vs k=0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lab, s, *r in rows:
        st = d.get((stock_of(lab), s), (None,) * 3)
        k0 = d.get((k0_of(lab), s), (None,) * 3) if k0_of(lab) else (None,) * 3
        cells = []
        for i in range(3):
            cells += [ms(r[i]), fmt_ratio(r[i], st[i]) if "-pst" in lab else "", fmt_ratio(r[i], k0[i])]
        f = flops.get((lab, s))
        cells += ["" if f is None else f"{f:.2f}",
                  fmt_ratio(f, flops.get((stock_of(lab), s))) if "-pst" in lab else "",
                  fmt_ratio(f, flops.get((k0_of(lab), s))) if k0_of(lab) else ""]
        out.append(f"| {lab} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def flop_counts(models: dict, sizes) -> dict:
    """GFLOPs of one forward per (model label, size), from torch's FLOP counter (pst_yolo.tools.models.full_gflops)."""
    from pst_yolo.tools.models import full_gflops

    return {(label, s): full_gflops(m, s, None) for label, m in models.items() for s in sizes}


# ------------------------------------------------------------------------------------------------- ops and syncs
def op_counts(args, models, labels_yaml):
    """Top-level aten ops (each at least one kernel launch on a GPU) and host syncs (``aten::_local_scalar_dense``)
    of one eval forward, per model and size, from torch.profiler on the CPU."""
    import torch

    from pst_yolo.opcount import ops_and_syncs

    res = {}
    for label, m in models.items():
        say(f"op counts: {label}")
        for size in args.sizes:
            x = torch.rand(1, 3, size, size)
            res[(label, size)] = with_strategy(labels_yaml[label][2], lambda m=m, x=x: ops_and_syncs(m, x))()
    out = ["| model | " + " | ".join(f"ops {s}" for s in args.sizes) + " | ops vs stock | host syncs |",
           "|---|" + "---:|" * (len(args.sizes) + 2)]
    for label in models:
        ops = [res[(label, s)][0] for s in args.sizes]
        base = [res.get((stock_of(label), s), (None,))[0] for s in args.sizes]
        ratio = " / ".join(fmt_ratio(o, b) for o, b in zip(ops, base)) if "-pst" in label else ""
        out.append(f"| {label} | " + " | ".join(map(str, ops)) + f" | {ratio} | "
                   f"{max(res[(label, s)][1] for s in args.sizes)} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------- memory
def _rss_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def mem_child(args):
    """Subprocess body: peak extra resident memory (MiB) of one forward, printed as JSON."""
    import torch

    engine, yaml, topk, what = args.mem_child
    torch.set_num_threads(args.threads)
    if engine == "torch":
        size = int(what)
        model, why = build(yaml, None if topk == "None" else int(topk))
        x = torch.rand(1, 3, size, size)
        run = lambda: model(x)  # noqa: E731
        ctx = torch.inference_mode()
    else:
        import numpy as np

        sess = ort_session(what, args.threads, arena=False)
        shape = sess.get_inputs()[0].shape
        feed = {sess.get_inputs()[0].name: np.random.rand(*shape).astype(np.float32)}
        run = lambda: sess.run(None, feed)  # noqa: E731
        ctx = contextlib.nullcontext()
    with ctx:
        run()
        gc.collect()
        base = _rss_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        run()
        peak = _rss_kb("VmHWM")
    print(json.dumps({"peak_mib": (peak - base) / 1024}))


def memory(args, labels_yaml, onnx_paths, notes):
    if not Path("/proc/self/clear_refs").exists():
        notes.append("peak memory skipped: needs Linux /proc/self/clear_refs")
        return []
    env = {**os.environ, **MMAP_ENV}
    rows = []
    for size in args.sizes:
        for label, (yaml, topk, strategy) in labels_yaml.items():
            res = {}
            jobs = [("torch", str(size))]
            child_env = {**env, "PST_SCORES": strategy} if strategy else dict(env)
            if label in FUSION_OF:
                child_env["PST_FUSION"] = FUSION_OF[label]
            if (label, size) in onnx_paths:
                jobs.append(("onnx", onnx_paths[(label, size)]))
            for engine, what in jobs:
                say(f"memory {size} px: {label} ({engine}, a fresh process)")
                cmd = [sys.executable, "-m", "pst_yolo.tools.bench", "--threads", str(args.threads), "--mem-child", engine, yaml, str(topk), what]
                p = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
                try:
                    res[engine] = json.loads(p.stdout.strip().splitlines()[-1])["peak_mib"]
                except Exception:
                    notes.append(f"memory child {label} {engine} {size} failed: {p.stderr.strip()[-300:]}")
            rows.append((label, size, res.get("torch"), res.get("onnx")))
        print(f"  memory {size}: done", file=sys.stderr)
    return rows


def memory_table(rows):
    d = {(lab, s): (pt, ox) for lab, s, pt, ox in rows}
    out = ["| model | size | PyTorch peak MiB | vs stock | onnxruntime peak MiB | vs stock |", "|---|---:|---:|---:|---:|---:|"]
    f = lambda v: "" if v is None else f"{v:.0f}"  # noqa: E731
    for lab, s, pt, ox in rows:
        st = d.get((stock_of(lab), s), (None, None))
        pst = "-pst" in lab
        out.append(f"| {lab} | {s} | {f(pt)} | {fmt_ratio(pt, st[0]) if pst else ''} | {f(ox)} | {fmt_ratio(ox, st[1]) if pst else ''} |")
    return "\n".join(out)


def targets_table(rows, mem_rows) -> str:
    """Each of ``TARGETS`` this run measured: the ratio, its limit, and whether it is met (misses named under it)."""
    values = {}
    for lab, s, pt, ox, ov in rows:
        values[("pytorch", s, lab)], values[("onnx", s, lab)], values[("openvino", s, lab)] = pt, ox, ov
    for lab, s, _pt, ox in mem_rows:
        values[("onnx-mem", s, lab)] = ox
    out = ["| target | size | measured | limit | met |", "|---|---:|---:|---:|---|"]
    missed = []
    for what, engine, size, num, den, limit in TARGETS:
        a, b = values.get((engine, size, num)), values.get((engine, size, den))
        if a is None or not b:
            out.append(f"| {what} | {size} | not measured | {limit:.2f} | - |")
            continue
        ratio = a / b
        out.append(f"| {what} | {size} | {ratio:.2f} | {limit:.2f} | {'yes' if ratio <= limit else '**no**'} |")
        if ratio > limit:
            missed.append(what)
    out.append("\n" + (f"Missed: {'; '.join(missed)}." if missed else "Every measured target is met."))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------- training
def detection_batch(batch, size, device="cpu"):
    """A seeded random training batch for ``DetectionModel.loss``: images and four boxes per image."""
    import torch

    g = torch.Generator().manual_seed(0)
    nb = 4 * batch
    targets = {
        "img": torch.rand(batch, 3, size, size, generator=g),
        "batch_idx": torch.arange(batch).repeat_interleave(4).float(),
        "cls": torch.randint(0, 80, (nb, 1), generator=g).float(),
        "bboxes": torch.rand(nb, 4, generator=g) * 0.4 + torch.tensor([0.3, 0.3, 0.0, 0.0]),
    }
    return {k: v.to(device) for k, v in targets.items()}


def train_step(args, notes, size=320, batch=2):
    """Forward + loss + backward of one batch with the real Ultralytics detection loss, PST vs stock."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    fns = {}
    targets = detection_batch(batch, size)
    for label, yaml, topk, _ in MODELS:
        if topk == 8:
            continue  # training is coarse-only whatever k is
        try:
            with contextlib.redirect_stdout(None):
                m = DetectionModel(yaml, verbose=False)
        except (FileNotFoundError, KeyError) as e:
            notes.append(f"training step: {yaml} skipped ({type(e).__name__})")
            continue
        m.args = get_cfg()
        m.train()

        def step(m=m):
            m.zero_grad(set_to_none=True)
            loss, _ = m.loss(targets)
            loss.sum().backward()

        fns[label.replace(" k=0", "")] = step
    t = interleaved(fns, max(3, args.runs // 2), 1, "training step")
    out = [f"| model | train step ms (batch {batch}, {size} px) | PST / stock |", "|---|---:|---:|"]
    for lab, v in t.items():
        ratio = fmt_ratio(v, t.get(stock_of(lab))) if "-pst" in lab else ""
        out.append(f"| {lab} | {v * 1e3:.0f} | {ratio} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------------ PSA
def psa_sweep(args):
    """PSA (k=0, k=8) vs full self-attention over the same finer map, with log-log growth exponents."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from ultralytics.nn.modules import Conv

    from pst_yolo.modules import PyramidSparseAttention

    c = 64  # 2 heads of 32, like the P4 PST of yolo11n-pst
    sides = [10, 20, 40] if args.quick else [20, 40, 80, 160]

    class FullSelfAttention(torch.nn.Module):
        """Same projections as PSA, but every pixel of the finer map attends to every other (N x N)."""

        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.proj = (Conv(c, c, 1, act=False) for _ in range(4))

        def forward(self, x):
            b, _, h, w = x.shape
            q, k, v = (t.flatten(2).unflatten(1, (2, 32)).transpose(-2, -1) for t in (self.q(x), self.k(x), self.v(x)))
            return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(-2, -1).reshape(b, c, h, w))

    psa0, psa8 = PyramidSparseAttention(c, topk=0).eval(), PyramidSparseAttention(c, topk=8).eval()
    full = FullSelfAttention().eval()
    res = {"PSA k=0": [], "PSA k=8": [], "full self-attention": []}
    for s in sides:
        x, u = torch.randn(1, c, s, s), torch.randn(1, c, (s + 1) // 2, (s + 1) // 2)
        fns = {"PSA k=0": lambda: psa0(x, u), "PSA k=8": lambda: psa8(x, u), "full self-attention": lambda: full(x)}
        with torch.inference_mode():
            t = interleaved(fns, max(3, args.runs // (4 if s >= 160 else 1)), args.warmup, f"PSA sweep {s}x{s}")
        for k, v in t.items():
            res[k].append(v)
    n = np.array([s * s for s in sides], dtype=float)
    out = ["| map (N tokens) | " + " | ".join(res) + " | full / PSA k=8 |", "|---|" + "---:|" * (len(res) + 1)]
    for i, s in enumerate(sides):
        out.append(
            f"| {s}x{s} ({s * s}) | "
            + " | ".join(f"{res[k][i] * 1e3:.2f} ms" for k in res)
            + f" | {res['full self-attention'][i] / res['PSA k=8'][i]:.1f}x |"
        )
    exps = {k: np.polyfit(np.log(n), np.log(np.array(v)), 1)[0] for k, v in res.items()}
    exps_hi = {k: np.polyfit(np.log(n[-2:]), np.log(np.array(v[-2:])), 1)[0] for k, v in res.items()}
    out.append("| growth exponent, all sizes (t ~ N^a) | " + " | ".join(f"{exps[k]:.2f}" for k in res) + " | |")
    out.append("| growth exponent, two largest | " + " | ".join(f"{exps_hi[k]:.2f}" for k in res) + " | |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------------ main
def openvino_version():
    import importlib.metadata

    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def stamp(args):
    import onnxruntime
    import torch
    import ultralytics

    import pst_yolo

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"device: {cpu}, {os.cpu_count()} logical cores, GPU: {gpu}; threads: {args.threads} (torch and onnxruntime)\n"
        f"versions: python {platform.python_version()}, torch {torch.__version__}, ultralytics {ultralytics.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, openvino {openvino_version()}, pst-yolo {pst_yolo.__version__}; "
        f"PST_ATTN={os.environ.get('PST_ATTN', '(unset: auto)')}, PST_SCORES={os.environ.get('PST_SCORES', '(unset: auto)')}"
        "\n"
        f"settings: sizes {args.sizes}, runs {args.runs} at <=640 px (scaled down by pixel count above), warm-up "
        f"{args.warmup}, batch 1, fp32, fused eval models, random weights"
    )


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import ultralytics.nn.tasks  # noqa: F401  (Ultralytics first; the pst_yolo start-up hook patches it on import)

    if args.mem_child:
        return mem_child(args)
    import logging

    from ultralytics.utils import LOGGER as UL

    UL.setLevel(logging.WARNING)  # keep the export chatter out of the report
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)
    notes, models, labels_yaml = [], {}, {}
    for label, yaml, topk, strategy in MODELS:
        if args.models and label not in args.models:
            continue
        say(f"building {label}")
        m, why = build(yaml, topk, FUSION_OF.get(label))
        if m is None:
            notes.append(f"skipped {label}: {why}")
            continue
        models[label], labels_yaml[label] = m, (yaml, topk, strategy)
    print("# pst-yolo benchmark\n\n```\n" + stamp(args) + "\n```\n")
    if not args.no_ops:
        print("## Ops and host syncs per eval forward (torch.profiler, CPU)\n\n" + op_counts(args, models, labels_yaml)
              + "\n")
    rows, onnx_paths = latency(args, models, labels_yaml, notes)
    say("FLOP counts")
    print("## Inference latency (median, batch 1, CPU)\n\n" + latency_table(rows, flop_counts(models, args.sizes))
          + "\n")
    mem_rows = []
    if not args.no_memory:
        mem_rows = memory(args, labels_yaml, onnx_paths, notes)
        print("## Peak extra resident memory of one forward\n\n" + memory_table(mem_rows) + "\n")
    print("## Targets\n\n" + targets_table(rows, mem_rows) + "\n")
    if not args.no_train:
        print("## Training step (forward + loss + backward, CPU)\n\n" + train_step(args, notes) + "\n")
    if not args.no_psa:
        print("## PSA alone vs full self-attention (c=64, 2 heads, batch 1, CPU)\n\n" + psa_sweep(args) + "\n")
    print("## GPU\n\nThis benchmark measures the CPU; `pst-yolo gpu-check` measures a CUDA device (latency per kernel and "
          "mode, memory, parity).\n")
    if notes:
        print("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":  # the same as `pst-yolo bench`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["bench", *sys.argv[1:]]))
