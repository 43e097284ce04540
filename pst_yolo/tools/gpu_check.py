"""pst-yolo on a CUDA GPU: issue 11's checklist in one script, Markdown on stdout, Markdown + JSON in ``--out``.

Sections (``--only`` picks some; each one's failure is reported and the rest still run; exit 1 if any failed):

- ``cli``: the stock ``yolo train`` of yolo11n-pst and of stock yolo11n (same command) with ``amp=True`` on the GPU;
  losses finite; ``yolo val`` at k=0 and k=8 and ``yolo predict``; the k=8 metrics of the same checkpoint on the GPU
  and on the CPU (fp32, the stock validator), whose difference must stay within 1e-3.
- ``kernels``: every attention kernel in fp16 and bf16 against a float64 reference at the shapes yolo11n-pst runs at
  640 px (reference, SDPA with each of its CUDA backends, FlashAttention and SageAttention when installed), and the
  selection strategies (lse, chunked) against the float64 scores: error, identical top-k, time per call.
- ``latency``: fp16, 640 px, batch 1 and 32: yolo11n, yolo12n and their PST versions (k=0, k=8, and k=8 with the
  chunked strategy), eager, CUDA graphs (captured eager forward) and ``torch.compile``; then yolo11n-pst k=8 per
  attention kernel (paper Table 4f). Ratios next to the paper's (+2.5% for fine attention, 1.24 vs 1.5 ms).
- ``memory``: peak GPU memory of an AMP training step (batch 16, 640 px) and of a 1280 px fp16 forward, PST vs stock.

Each section runs within a time budget (``BUDGET``; ``--budget SECTION=SECONDS``) and writes gpu_check.md/.json when
it ends, so the one 9-minute device call (``scripts/gpu_run.sh``, which installs the carried wheels from
``scripts/gpu_wheels.sh`` and prints ``--summary``; docs/performance.md "GPU runbook") keeps whatever finished.

On a CPU the same code paths run small (``--smoke``; tests/test_gpu_check.py rehearses gpu_run.sh), so the script is
ready when a GPU is:

    bash scripts/gpu_run.sh --rehearse                                   # or: pst-yolo gpu-check --device cpu --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from pst_yolo.offline import seed_fonts, set_offline_env
from pst_yolo.tools.bench import (FUSION_OF, MODELS, build, detection_batch, fmt_ratio, interleaved, k0_of, stock_of,
                                  with_strategy)

set_offline_env()  # before Ultralytics is imported, here and in every `yolo` subprocess

SECTIONS = ("cli", "kernels", "latency", "memory")  # in order of value: the first ones run first
# Seconds each section may take in the one GPU run (scripts/gpu_run.sh: <= 9 minutes with installing): a section checks
# its clock between measurements and reports what it skipped, so the run finishes and keeps what it measured.
BUDGET = {"cli": 210, "kernels": 60, "latency": 150, "memory": 45}
COMPILE_SECONDS = 60  # torch.compile is only started with at least this much of the latency budget left
# bench's models with the default (auto) strategy, which is lse on CUDA, plus chunked scores to show why auto avoids them
LATENCY_MODELS = [m for m in MODELS if m[3] is None and m[0] not in FUSION_OF] + [  # CPU rows of another fusion: bench
    ("yolo11n-pst k=8 chunked", "yolo11n-pst.yaml", 8, "chunked")]
COMPILED = ("yolo11n", "yolo11n-pst k=0", "yolo11n-pst k=8")  # torch.compile is slow to build: the paper's models only
# Largest relative error (max |out - ref| / max |ref|) each input dtype may show; SageAttention rounds QK^T to int8.
TOLERANCE = {"float16": 5e-3, "bfloat16": 3e-2, "sage": 6e-2}
PARITY = 1e-3  # |mAP(GPU) - mAP(CPU)| of one checkpoint, issue 11
PAPER = {"fine overhead": 1.025, "PST-N ms": 1.24, "yolo11n ms": 1.5}


def parser():
    """The command line of ``pst-yolo gpu-check``."""
    p = argparse.ArgumentParser(prog="pst-yolo gpu-check", description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="CUDA index (default 0) or cpu (default when no GPU is visible)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and few runs: checks the code paths, not the figures")
    p.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.md, gpu_check.json and the runs")
    p.add_argument("--epochs", type=int, default=None, help="cli: training epochs (default 10; smoke 1)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 50; smoke 2)")
    p.add_argument("--modes", nargs="+", default=None, choices=("eager", "cudagraph", "compile"),
                   help="latency modes (default all three; on a CPU eager only)")
    p.add_argument("--budget", nargs="+", default=[], metavar="SECTION=SECONDS",
                   help=f"time budget per section (default {' '.join(f'{k}={v}' for k, v in BUDGET.items())})")
    p.add_argument("--summary", default=None, metavar="OUT", help="print the compact summary of a finished run's "
                   "gpu_check.json in OUT and exit")
    return p


def parse_args(argv=None):
    p = parser()
    a = p.parse_args(argv)
    if a.summary:
        return a
    a.budget_s = dict(BUDGET)
    for item in a.budget:
        name, _, sec = item.partition("=")
        if name not in BUDGET or not sec.replace(".", "", 1).isdigit():
            p.error(f"--budget {item}: expected SECTION=SECONDS with SECTION one of {list(BUDGET)}")
        a.budget_s[name] = float(sec)
    import torch

    a.device = a.device or ("0" if torch.cuda.is_available() else "cpu")
    a.cuda = a.device != "cpu"
    if a.cuda and not torch.cuda.is_available():
        p.error(f"--device {a.device}: no CUDA device is visible to torch {torch.__version__}")
    a.torch_device = f"cuda:{a.device}" if a.cuda else "cpu"
    a.epochs = a.epochs or (1 if a.smoke else 10)
    a.runs = a.runs or (2 if a.smoke else 50)
    a.modes = a.modes or (["eager", "cudagraph", "compile"] if a.cuda else ["eager"])
    a.imgsz = 64 if a.smoke else 640
    a.batches = (1, 2) if a.smoke else (1, 32)
    a.out = Path(a.out).resolve()
    return a


def time_left(args) -> float:
    """Seconds left of the running section's budget."""
    return args.deadline - time.perf_counter()


def sync(args):
    import torch

    if args.cuda:
        torch.cuda.synchronize(args.torch_device)


def timed(args, fns: dict, warmup: int = 3) -> dict:
    """Median seconds per call (synchronised), the calls interleaved round by round."""
    wrapped = {k: (lambda f=f: (f(), sync(args))) for k, f in fns.items()}
    return interleaved(wrapped, args.runs, warmup)


# -------------------------------------------------------------------------------------------------------------- cli
def run_logged(cmd, log: Path, env_extra=None, cwd=None) -> str:
    env = {**os.environ, **(env_extra or {})}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}; log {log}:\n{text[-3000:]}")
    return text


def all_row(log: str):
    """mAP50, mAP50-95 of the ``all`` row of the last metric table a ``yolo val`` printed."""
    rows = re.findall(r"^\s*all\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s*$", log, re.M)
    return tuple(map(float, rows[-1])) if rows else None


def section_cli(args, res, md):
    from pst_yolo.compare import read_curve, train_command, validate, yolo_command
    from pst_yolo.data import make_detection_dataset

    work = args.out / "cli"
    work.mkdir(parents=True, exist_ok=True)
    n_train, n_val, size, batch = (48, 16, 96, 16) if args.smoke else (256, 200, 160, 32)
    data = make_detection_dataset(work / "data", n_train=n_train, n_val=n_val, imgsz=size, seed=0)
    settings = {"device": args.device, "amp": True, "epochs": args.epochs, "imgsz": size, "batch": batch,
                "workers": 0 if args.smoke else 4, "deterministic": False}
    md.append(f"Data: generated demo set, {n_train} train / {n_val} val images at {size} px; `yolo train ... "
              f"{' '.join(f'{k}={v}' for k, v in settings.items())} seed=0` for both models.\n")
    md += ["| model | train s | AMP | losses finite | mAP50-95 (final epoch) | vs stock |", "|---|---:|---|---|---:|---:|"]
    trained = {}
    for yaml in ("yolo11n.yaml", "yolo11n-pst.yaml"):
        name = Path(yaml).stem
        t = time.perf_counter()
        log = run_logged(train_command(yaml, data, 0, settings, work / "runs", name), work / f"train_{name}.log",
                         cwd=work)
        seconds = time.perf_counter() - t
        run_dir = work / "runs" / name
        with open(run_dir / "results.csv") as f:
            header, *lines = [[c.strip() for c in line.split(",")] for line in f if line.strip()]
        losses = [float(r[i]) for r in lines for i, h in enumerate(header) if "loss" in h]
        amp = sorted({m.strip() for m in re.findall(r"AMP: (.*)", log)}) or ["(no AMP check: CPU)"]
        curve = read_curve(run_dir / "results.csv", "detect")
        trained[name] = dict(seconds=seconds, amp=amp, finite=all(map(math.isfinite, losses)), map=curve[-1],
                             weights=str(run_dir / "weights" / "best.pt"))
    for name, r in trained.items():
        ratio = fmt_ratio(r["map"], trained["yolo11n"]["map"]) if name != "yolo11n" else ""
        md.append(f"| {name} | {r['seconds']:.0f} | {'; '.join(r['amp'])} | {r['finite']} | {r['map']:.4f} | {ratio} |")
    res["train"] = trained
    best = Path(trained["yolo11n-pst"]["weights"])

    md += ["", "| `yolo val` of yolo11n-pst best.pt | device | mAP50 | mAP50-95 |", "|---|---|---:|---:|"]
    cli_val = {}
    for k in (0, 8):
        log = run_logged([*yolo_command(), "val", f"model={best}", f"data={data}", f"imgsz={size}", f"batch={batch}",
                          f"device={args.device}", "plots=False", f"project={work / 'runs'}", f"name=val_k{k}",
                          "exist_ok=True"], work / f"val_k{k}.log", {"PST_TOPK": str(k)}, cwd=work)
        cli_val[k] = all_row(log)
        md.append(f"| PST_TOPK={k} | {args.device} | " + " | ".join(f"{v:.3f}" for v in cli_val[k] or ("?", "?")) + " |")
    res["cli_val"] = cli_val

    # The same checkpoint, fine attention on (k=8), fp32, through the stock validator on both devices.
    here = validate(best, data, 8, size, batch, args.device, "detect")
    cpu = validate(best, data, 8, size, batch, "cpu", "detect")
    diff = max(abs(a - b) for a, b in zip(here, cpu))
    res["parity"] = dict(device=here, cpu=cpu, max_abs_diff=diff, ok=diff <= PARITY)
    md += ["", "| k=8, fp32 | mAP50-95 | mAP50 |", "|---|---:|---:|",
           f"| device {args.device} | {here[0]:.5f} | {here[1]:.5f} |", f"| cpu | {cpu[0]:.5f} | {cpu[1]:.5f} |",
           f"| abs diff (target <= {PARITY}) | {abs(here[0] - cpu[0]):.2e} | {abs(here[1] - cpu[1]):.2e} |"]

    log = run_logged([*yolo_command(), "predict", f"model={best}", f"source={data.parent / 'images' / 'val'}",
                      f"imgsz={size}", f"device={args.device}", f"project={work / 'runs'}", "name=predict",
                      "exist_ok=True"], work / "predict.log", cwd=work)
    speed = re.findall(r"Speed: (.*)", log)
    res["predict"] = dict(images=len(list((work / "runs" / "predict").glob("*.jpg"))), speed=speed[-1] if speed else None)
    md.append(f"\n`yolo predict` (k=8): {res['predict']['images']} images saved; {res['predict']['speed']}")
    return all(r["finite"] for r in trained.values()) and res["parity"]["ok"] and res["predict"]["images"] > 0


# ---------------------------------------------------------------------------------------------------------- kernels
def sdpa_backend(name):
    """A context that forces one of PyTorch SDPA's CUDA backends (None: let SDPA choose)."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, name))


def kernel_shapes(args):
    """(B, heads, N, M, d) of yolo11n-pst's two PSA layers at 640 px (batch 1 and 32): P3<-P4 and P4<-P5."""
    if args.smoke:
        return [(1, 1, 256, 64, 32), (2, 2, 64, 16, 32)]
    return [(1, 1, 6400, 1600, 32), (32, 2, 1600, 400, 32)]


def half_inputs(args, md, generator, min_left: float):
    """(dtype, shape, (q, k, v)) per half dtype and kernel shape, random normal on the section's device; a shape
    reached with under ``min_left`` seconds of the section's budget gets a "not run" row in ``md`` instead."""
    import torch

    for dtype in (torch.float16, torch.bfloat16):
        for b, h, n, m, d in kernel_shapes(args):
            if time_left(args) < min_left:
                md.append(f"| {str(dtype)[6:]} | {(b, h, n, m, d)} | all | | | | not run: section budget spent |")
                continue
            dev = args.torch_device
            yield dtype, (b, h, n, m, d), tuple(
                torch.randn(b, h, rows, d, device=dev, generator=generator).to(dtype) for rows in (n, m, m))


def section_kernels(args, res, md):
    import torch

    from pst_yolo import attention as A
    from pst_yolo.scoring import coarse_attention

    dev = args.torch_device
    variants = [("reference", "reference", None), ("sdpa (auto)", "sdpa", None)]
    if args.cuda:
        variants += [(f"sdpa {b.lower()}", "sdpa", b) for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")]
    variants += [("flash", "flash", None), ("sage", "sage", None)]
    md += ["| dtype | shape (B, heads, N, M, d) | kernel | rel. error | tolerance | us/call | status |",
           "|---|---|---|---:|---:|---:|---|"]
    rows, ok = [], True
    g = torch.Generator(device=dev).manual_seed(0)
    for dtype, (b, h, n, m, d), (q, k, v) in half_inputs(args, md, g, min_left=5):
        ref = A.reference_attention(q.double(), k.double(), v.double())
        scale = ref.abs().max().item()
        for label, name, backend in variants:
            why = A.why_not(name, q, k, v)
            tol = TOLERANCE["sage" if name == "sage" else str(dtype).split(".")[-1]]
            row = dict(dtype=str(dtype), shape=(b, h, n, m, d), kernel=label, tol=tol)
            if why is None:
                try:
                    fn = A.KERNELS[name].fn
                    with torch.no_grad(), sdpa_backend(backend):
                        out = fn(q, k, v)
                        row["us"] = timed(args, {label: lambda: fn(q, k, v)})[label] * 1e6
                    row["error"] = (out.double() - ref).abs().max().item() / scale
                    row["status"] = "ok" if row["error"] <= tol else "TOO FAR"
                except RuntimeError as e:  # e.g. an SDPA backend that refuses this shape/dtype
                    row["status"] = f"not served: {str(e).splitlines()[0][:120]}"
            else:
                row["status"] = f"not run: {why}"
            ok &= row["status"] != "TOO FAR"
            rows.append(row)
            md.append(f"| {row['dtype'][6:]} | {row['shape']} | {label} | {row.get('error', float('nan')):.2e} | "
                      f"{tol:g} | {row.get('us', float('nan')):.1f} | {row['status']} |")
    res["kernels"] = rows

    md += ["", "Selection scores (paper eq. 3) from fp16/bf16 q, k against float64 scores of the same inputs:", "",
           "| dtype | shape | strategy | rel. score error | same top-8 set (b, head) | output rel. error | us/call |",
           "|---|---|---|---:|---:|---:|---:|"]
    sel = []
    for dtype, (b, h, n, m, d), (q, k, v) in half_inputs(args, md, g, min_left=3):
        sc = d**-0.5
        ref_out, ref_s = coarse_attention(q.double(), k.double(), v.double(), sc, strategy="reference")
        top_ref = ref_s.topk(min(8, m), dim=-1).indices.sort(-1).values
        for strategy in ("lse", "chunked"):
            with torch.no_grad():
                out, s = coarse_attention(q, k, v, sc, strategy=strategy)
                t = timed(args, {strategy: lambda: coarse_attention(q, k, v, sc, strategy=strategy)})[strategy]
            same = (s.topk(min(8, m), dim=-1).indices.sort(-1).values == top_ref).all(-1).float().mean().item()
            r = dict(dtype=str(dtype), shape=(b, h, n, m, d), strategy=strategy,
                     score_error=((s.double() - ref_s).abs().max() / ref_s.abs().max()).item(), same_topk=same,
                     out_error=((out.double() - ref_out).abs().max() / ref_out.abs().max()).item(), us=t * 1e6)
            sel.append(r)
            ok &= r["score_error"] <= 1e-3 and r["out_error"] <= TOLERANCE[r["dtype"][6:]]
            md.append(f"| {r['dtype'][6:]} | {r['shape']} | {strategy} | {r['score_error']:.2e} | {same:.3f} | "
                      f"{r['out_error']:.2e} | {r['us']:.1f} |")
    res["selection"] = sel
    return ok


# ---------------------------------------------------------------------------------------------------------- latency
def graphed(model, x):
    """The eager forward captured once into a CUDA graph; the callable replays it (static input ``x``)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph asks: caches, workspaces, anchors
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


SYNC_EVENTS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")


def host_syncs(args, model, x) -> dict:
    """How often one eval forward synchronises with the host: ``.item()``/``bool(tensor)`` (aten::_local_scalar_dense)
    and explicit stream/device synchronisations (CUDA runtime events), from torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.cuda else [])
    with torch.inference_mode():
        model(x)
        sync(args)
        with profile(activities=activities) as prof:
            model(x)
    names = [e.name for e in prof.events()]
    return {e: names.count(e) for e in SYNC_EVENTS}


def prepared(args, yaml, topk):
    """A fused eval model on the device, fp16 on a GPU; or (None, why)."""
    model, why = build(yaml, topk)
    if model is None:
        return None, why
    model = model.to(args.torch_device)
    return (model.half() if args.cuda else model), None


def section_latency(args, res, md):
    import torch

    from pst_yolo import attention as A

    dtype = torch.float16 if args.cuda else torch.float32
    models, notes = {}, []
    for label, yaml, topk, strategy in LATENCY_MODELS:
        m, why = prepared(args, yaml, topk)
        if m is None:
            notes.append(f"{label}: {why}")
        else:
            models[label] = (m, strategy)
    table = {}
    for batch in args.batches:
        x = torch.rand(batch, 3, args.imgsz, args.imgsz, device=args.torch_device, dtype=dtype)
        for mode in args.modes:
            need = COMPILE_SECONDS if mode == "compile" else 10
            if time_left(args) < need:
                notes.append(f"{mode} batch {batch}: skipped, {max(time_left(args), 0):.0f} s of the latency budget left "
                             f"(needs {need})")
                continue
            fns = {}
            for label, (m, strategy) in models.items():
                if mode == "compile" and label not in COMPILED:
                    continue
                if mode == "compile" and time_left(args) < COMPILE_SECONDS:
                    notes.append(f"compile {label} batch {batch}: skipped, latency budget nearly spent")
                    continue
                try:
                    with torch.inference_mode():
                        if mode == "eager":
                            fn = lambda m=m: m(x)  # noqa: E731
                        elif mode == "cudagraph":
                            fn = with_strategy(strategy, lambda m=m: graphed(m, x))()  # captured under the strategy
                        else:
                            t0 = time.perf_counter()
                            cm = torch.compile(m, dynamic=False)  # one static graph per batch size
                            with_strategy(strategy, lambda: cm(x))()
                            notes.append(f"torch.compile {label} batch {batch}: first call {time.perf_counter() - t0:.0f} s")
                            fn = lambda cm=cm: cm(x)  # noqa: E731
                    fns[label] = with_strategy(strategy, fn)
                except Exception as e:  # a mode that does not apply to a model is a finding, not a crash
                    notes.append(f"{mode} {label} batch {batch}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            with torch.inference_mode():
                for label, t in timed(args, fns).items():
                    table[(label, batch, mode)] = t
            print(f"  latency batch {batch} {mode}: done", file=sys.stderr, flush=True)
    cols = [(b, mode) for b in args.batches for mode in args.modes]
    md += ["| model | " + " | ".join(f"b{b} {mode} ms | vs stock | vs k=0" for b, mode in cols) + " |",
           "|---|" + "---:|" * (3 * len(cols))]
    for label in models:
        cells = []
        for b, mode in cols:
            t = table.get((label, b, mode))
            st, k0 = table.get((stock_of(label), b, mode)), table.get((k0_of(label.replace(" chunked", "")), b, mode))
            cells += ["" if t is None else f"{t * 1e3:.2f}", fmt_ratio(t, st) if "-pst" in label else "",
                      fmt_ratio(t, k0) if k0_of(label) else ""]
        md.append(f"| {label} | " + " | ".join(cells) + " |")
    res["latency"] = [dict(model=lab, batch=b, mode=mode, ms=t * 1e3) for (lab, b, mode), t in table.items()]

    # Paper Table 4f: yolo11n-pst k=8 per attention kernel, batch 1, eager.
    x = torch.rand(1, 3, args.imgsz, args.imgsz, device=args.torch_device, dtype=dtype)
    probe = [torch.randn(1, 2, 64, 32, device=args.torch_device, dtype=dtype) for _ in range(3)]
    m = models.get("yolo11n-pst k=8", (None,))[0]
    per_kernel = {}
    if m is not None and time_left(args) < 10:
        notes.append("per-kernel table: skipped, latency budget spent")
    elif m is not None:
        fns = {}
        for name in A.KERNELS:
            why = A.why_not(name, *probe)
            fns[name] = (lambda name=name: (A.set_backend(name), m(x), A.set_backend(None)))
            per_kernel[name] = dict(served_by="itself" if why is None else f"sdpa (fallback: {why})")
        with torch.inference_mode():
            for name, t in timed(args, fns).items():
                per_kernel[name]["ms"] = t * 1e3
        md += ["", "yolo11n-pst k=8 per attention kernel (batch 1, eager; the coarse branch, fine attention's mask goes "
               "to SDPA):", "", "| kernel | ms | vs sdpa | served by |", "|---|---:|---:|---|"]
        for name, r in per_kernel.items():
            md.append(f"| {name} | {r['ms']:.2f} | {fmt_ratio(r['ms'], per_kernel['sdpa']['ms'])} | {r['served_by']} |")
    res["per_kernel"] = per_kernel

    # Host synchronisations in one eval forward (they stall the stream and rule out CUDA graphs): issue 22's target 0.
    syncs = {}
    for label in ("yolo11n-pst k=8", "yolo11n-pst k=0"):
        if label in models and time_left(args) > 3:
            syncs[label] = host_syncs(args, models[label][0], x)
    res["host_syncs"] = syncs
    md += ["", "Host synchronisations in one eval forward (torch.profiler, batch 1):", "",
           "| model | " + " | ".join(SYNC_EVENTS) + " |", "|---|" + "---:|" * len(SYNC_EVENTS)]
    md += [f"| {lab} | " + " | ".join(str(c[e]) for e in SYNC_EVENTS) + " |" for lab, c in syncs.items()]

    # Targets (issue 11): with the best mode at batch 1.
    best = {lab: min((table[(lab, 1, mode)], mode) for mode in args.modes if (lab, 1, mode) in table) for lab in models
            if any((lab, 1, mode) in table for mode in args.modes)}
    checks = []
    if "yolo11n-pst k=8" in best and "yolo11n" in best:
        mode = best["yolo11n-pst k=8"][1]
        pst, stock = table[("yolo11n-pst k=8", 1, mode)], table.get(("yolo11n", 1, mode))
        k0 = table.get(("yolo11n-pst k=0", 1, mode))
        checks.append(("PST-N k=8 / yolo11n, batch 1, " + mode, pst / stock if stock else None, 1.0,
                       f"paper {PAPER['PST-N ms']} vs {PAPER['yolo11n ms']} ms"))
        checks.append(("fine-attention overhead k=8 / k=0, batch 1, " + mode, pst / k0 if k0 else None, 1.10,
                       f"paper {PAPER['fine overhead']}"))
    for label, counts in syncs.items():
        checks.append((f"host syncs, {label} eval forward", sum(counts.values()), 0, ", ".join(SYNC_EVENTS)))
    for name in ("flash", "sage"):
        r = per_kernel.get(name, {})
        if r.get("served_by") == "itself":
            checks.append((f"{name} / sdpa (yolo11n-pst k=8)", r["ms"] / per_kernel["sdpa"]["ms"], 1.0, ""))
    md += ["", "| target | measured | bound | note |", "|---|---:|---:|---|"]
    for what, value, bound, note in checks:
        md.append(f"| {what} | {'' if value is None else f'{value:.2f}'} | <= {bound} | {note} |")
    res["targets"] = [dict(what=w, value=v, bound=b, met=v is not None and v <= b) for w, v, b, _ in checks]
    res["latency_notes"] = notes
    md += [""] + [f"- {n}" for n in notes]
    return all(t["met"] for t in res["targets"])


# ----------------------------------------------------------------------------------------------------------- memory
def peak(args, fn):
    """Peak GPU memory (MiB) allocated while ``fn`` runs, above what was allocated before; None on a CPU."""
    import torch

    if not args.cuda:
        fn()
        return None
    sync(args)
    torch.cuda.reset_peak_memory_stats(args.torch_device)
    before = torch.cuda.memory_allocated(args.torch_device)
    fn()
    sync(args)
    return (torch.cuda.max_memory_allocated(args.torch_device) - before) / 2**20


def section_memory(args, res, md):
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from pst_yolo.runtime import set_topk

    batch, size, big = (2, 64, 128) if args.smoke else (16, 640, 1280)
    targets = detection_batch(batch, size, args.torch_device)
    rows = []
    for stock, pst in (("yolo11n.yaml", "yolo11n-pst.yaml"), ("yolo12n.yaml", "yolo12n-pst.yaml")):
        for yaml in (stock, pst):
            with contextlib.redirect_stdout(None):
                m = DetectionModel(yaml, verbose=False).to(args.torch_device)
            m.args = get_cfg()
            m.train()

            def step(m=m):
                m.zero_grad(set_to_none=False)  # gradients stay allocated: the steady state of a training loop
                with torch.autocast(args.torch_device.split(":")[0], enabled=args.cuda):
                    loss, _ = m.loss(targets)
                loss.sum().backward()

            step()
            train_mib = peak(args, step)
            m.eval()
            m = m.half() if args.cuda else m
            x = torch.rand(1, 3, big, big, device=args.torch_device, dtype=next(m.parameters()).dtype)
            fwd = {}
            for k in ((None,) if yaml == stock else (0, 8)):
                if k is not None:
                    set_topk(m, k)
                with torch.inference_mode():
                    m(x)
                    fwd[k] = peak(args, lambda m=m: m(x))
            rows.append(dict(model=Path(yaml).stem, train_mib=train_mib, forward_mib=fwd))
            del m
            if args.cuda:
                torch.cuda.empty_cache()
    mib = lambda v: "n/a (CPU)" if v is None else f"{v:.0f}"  # noqa: E731
    md += [f"| model | AMP train step, batch {batch}, {size} px (MiB) | vs stock | fp16 forward {big} px, k=0 / k=8 "
           "(MiB) | vs stock |", "|---|---:|---:|---:|---:|"]
    by = {r["model"]: r for r in rows}
    for r in rows:
        st = by[stock_of(r["model"])]
        f = list(r["forward_mib"].values())
        md.append(f"| {r['model']} | {mib(r['train_mib'])} | {fmt_ratio(r['train_mib'], st['train_mib']) if r is not st else ''}"
                  f" | {' / '.join(mib(v) for v in f)} | "
                  f"{fmt_ratio(f[-1], st['forward_mib'][None]) if r is not st else ''} |")
    res["memory"] = [dict(r, forward_mib={str(k): v for k, v in r["forward_mib"].items()}) for r in rows]
    return True


# ------------------------------------------------------------------------------------------------------------- main
def stamp(args):
    import torch
    import ultralytics

    import pst_yolo

    gpu = torch.cuda.get_device_name(args.torch_device) if args.cuda else "none (CPU run)"
    versions = {}
    for mod in ("flash_attn", "sageattention", "triton"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception as e:  # noqa: BLE001  (a broken CUDA extension raises anything at import)
            versions[mod] = f"not usable ({type(e).__name__})"
    return dict(date=datetime.date.today().isoformat(), gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), ultralytics=ultralytics.__version__, pst_yolo=pst_yolo.__version__,
                python=platform.python_version(), cpu_cores=os.cpu_count(), smoke=args.smoke, **versions)


def summary(out: Path) -> str:
    """A few lines that tell how the run went: each section's status and time, and the figures issue 22 asks for."""
    res = json.loads((Path(out) / "gpu_check.json").read_text())
    st = res["stamp"]
    lines = [f"gpu_check on {st['gpu']}, torch {st['torch']} (CUDA {st['cuda']}), {st['date']}"]
    lines += [f"  {name}: {v['status']} in {v['seconds']:.0f} s (budget {v.get('budget', 0):.0f} s)"
              for name, v in res["sections"].items()]
    if "parity" in res:
        p = res["parity"]
        lines.append(f"  k=8 mAP50-95 device {p['device'][0]:.4f} vs cpu {p['cpu'][0]:.4f} (|diff| max {p['max_abs_diff']:.1e})")
    if "train" in res:
        lines.append("  AMP training finite: " + ", ".join(f"{k} {v['finite']}" for k, v in res["train"].items()))
    bad = [r for r in res.get("kernels", []) if r["status"] != "ok" and not r["status"].startswith("not run")]
    ok = [r for r in res.get("kernels", []) if r["status"] == "ok"]
    if ok or bad:
        worst = max(ok, key=lambda r: r["error"] / r["tol"], default=None)
        lines.append(f"  kernels: {len(ok)} within tolerance, {len(bad)} not" +
                     (f"; worst {worst['kernel']} {worst['dtype'][6:]} {worst['error']:.1e} (tol {worst['tol']})"
                      if worst else ""))
    sel = res.get("selection", [])
    if sel:
        lines.append(f"  selection: top-8 identical in {sum(r['same_topk'] == 1.0 for r in sel)}/{len(sel)} cases")
    for t in res.get("targets", []):
        lines.append(f"  target {t['what']}: {t['value'] if t['value'] is None else round(t['value'], 3)} "
                     f"(<= {t['bound']}) {'met' if t['met'] else 'MISSED'}")
    for r in res.get("memory", []):
        lines.append(f"  memory {r['model']}: train {r['train_mib']} MiB, forward {r['forward_mib']}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        print(summary(Path(args.summary)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.out / "ultralytics-config"))
    seed_fonts()  # Ultralytics' dataset check would look for its plot font online otherwise
    import logging

    from ultralytics.utils import LOGGER as UL

    UL.setLevel(logging.WARNING)
    res = {"stamp": stamp(args), "sections": {}}
    md = ["# pst-yolo GPU check", "", "```", json.dumps(res["stamp"]), "```", ""]
    print("\n".join(md), flush=True)
    funcs = {"cli": section_cli, "kernels": section_kernels, "latency": section_latency, "memory": section_memory}
    for name in args.only:
        part, t = [f"## {name}", ""], time.perf_counter()
        args.deadline = t + args.budget_s[name]
        try:
            ok = funcs[name](args, res, part)
            status = "ok" if ok else "TARGET MISSED"
        except Exception:  # report and go on: one broken section must not cost the device time of the others
            status, ok = "FAILED", False
            part += ["```", traceback.format_exc()[-3000:], "```"]
        res["sections"][name] = dict(status=status, seconds=round(time.perf_counter() - t, 1),
                                     budget=args.budget_s[name])
        part += ["", f"_{name}: {status} in {time.perf_counter() - t:.0f} s_", ""]
        print("\n".join(part), flush=True)
        md += part
        (args.out / "gpu_check.md").write_text("\n".join(md) + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 1 if any(s["status"] == "FAILED" for s in res["sections"].values()) else 0


if __name__ == "__main__":  # the same as `pst-yolo gpu-check`
    from pst_yolo.tools.cli import main as cli

    raise SystemExit(cli(["gpu-check", *sys.argv[1:]]))
