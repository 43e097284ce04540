"""Reproduce the paper's Table 4 ablations on any data: variant YAMLs, short training, fine on/off validation.

Each variant is the base model YAML (default ``yolo11-pst.yaml``) with the args of every PST row rewritten (a trailing
dict of named args, see ``pst_yolo.switches``) and, for stacked blocks, the row's ``n``. Variants that differ only in
``k`` share one training run: k acts at inference only (training is coarse-only, paper Sec. 3 and Table 4a).
Every trained model is validated twice, with fine attention on (its k) and off (k = 0), and timed on a 1-image batch.

    pst-yolo ablate --variants default,k16,gating,separate_kv,linear_relu --epochs 3
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pst_yolo.switches import ARG_ORDER, DEFAULTS, yaml_args


@dataclass(frozen=True)
class Variant:
    name: str
    what: str  # the Table 4 factor being changed, for the table
    args: dict = field(default_factory=dict)  # PST args by name (pst_yolo.switches.ARG_ORDER)
    blocks: int = 1  # stacked PSA blocks per PST layer (Table 4b)

    @property
    def train_key(self) -> str:
        """Variants with equal keys train identically (k is an inference-time setting)."""
        return json.dumps({"args": {k: v for k, v in self.args.items() if k != "k"}, "blocks": self.blocks},
                          sort_keys=True)

    @property
    def k(self) -> int:
        return 0 if self.args.get("attn", "softmax") != "softmax" else int(self.args.get("k", DEFAULTS["k"]))


VARIANTS = {
    "default": Variant("default", "paper: k=8, 1 block, no gating, shared K/V, softmax"),
    "k0": Variant("k0", "4a top-k = 0", {"k": 0}),
    "k16": Variant("k16", "4a top-k = 16", {"k": 16}),
    "k32": Variant("k32", "4a top-k = 32", {"k": 32}),
    "n2": Variant("n2", "4b 2 stacked PSA blocks", blocks=2),
    "n4": Variant("n4", "4b 4 stacked PSA blocks", blocks=4),
    "n6": Variant("n6", "4b 6 stacked PSA blocks", blocks=6),
    "gating": Variant("gating", "4c with self-gating", {"gating": True}),
    "linear_relu": Variant("linear_relu", "4d linear attention, ReLU", {"attn": "relu", "k": 0}),
    "linear_elu": Variant("linear_elu", "4d linear attention, ELU+1", {"attn": "elu", "k": 0}),
    "separate_kv": Variant("separate_kv", "4e separate fine K/V (w/o sharing)", {"shared_kv": False}),
}
DEFAULT_VARIANTS = ("default", "k0", "k16", "n2", "gating", "linear_relu", "linear_elu", "separate_kv")


def parse_variants(spec) -> list[Variant]:
    """Comma-separated names from ``VARIANTS``, plus ``k<int>`` and ``n<int>`` for any top-k / block count."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out = []
    for name in names:
        if name in VARIANTS:
            out.append(VARIANTS[name])
        elif re.fullmatch(r"k\d+", name):
            out.append(Variant(name, f"4a top-k = {name[1:]}", {"k": int(name[1:])}))
        elif re.fullmatch(r"n[1-9]\d*", name):
            out.append(Variant(name, f"4b {name[1:]} stacked PSA blocks", blocks=int(name[1:])))
        else:
            raise ValueError(
                f"pst-yolo: unknown ablation variant {name!r}; choose from {sorted(VARIANTS)}, k<int>, n<int>"
            )
    if not out:
        raise ValueError("pst-yolo: --variants is empty")
    if len({v.name for v in out}) != len(out):
        raise ValueError(f"pst-yolo: duplicate variants in {names}")
    return out


def row_repeats(blocks: int, depth: float) -> int:
    """The YAML ``n`` that Ultralytics' depth scaling (``max(round(n * depth), 1)`` for n > 1) turns into ``blocks``."""
    for n in range(1, 64 * max(blocks, 1)):
        if (max(round(n * depth), 1) if n > 1 else n) == blocks:
            return n
    raise ValueError(f"pst-yolo: no YAML n gives {blocks} PSA blocks at depth multiple {depth}")


def base_yaml(model) -> Path:
    from pst_yolo.integration import find_cfg

    p = Path(model)
    if p.is_file():
        return p
    found = find_cfg(str(model))
    if found is None:
        raise FileNotFoundError(f"pst-yolo: base model YAML {model!r} not found (a path or a shipped name)")
    return found


def variant_yaml(base: dict, variant: Variant, scale: str) -> dict:
    """The base model dict with every PST row rewritten for ``variant``, pinned to ``scale``."""
    d = copy.deepcopy(base)
    scales = d.get("scales") or {}
    if scales:
        if scale not in scales:
            raise ValueError(f"pst-yolo: scale {scale!r} not in the base YAML's scales {sorted(scales)}")
        d["scales"] = {scale: scales[scale]}  # the only scale, so it is used whatever the file is called
    depth = scales[scale][0] if scales else d.get("depth_multiple", 1.0)
    rows = 0
    for section in ("backbone", "head"):
        for i, row in enumerate(d.get(section, [])):
            if row[2] != "PST":
                continue
            rows += 1
            c2, rest = row[3][0], yaml_args(row[3][1:], f"PST row {i} of {section}")
            named = dict(zip(ARG_ORDER, rest)) | variant.args
            row[3] = [c2, named] if named else [c2]
            row[1] = row_repeats(variant.blocks, depth)
    if not rows:
        raise ValueError("pst-yolo: the base model YAML has no PST row to ablate")
    return d


def write_variant(base_path: Path, variant: Variant, scale: str, folder: Path) -> Path:
    """Write the variant YAML, named so Ultralytics reads the scale from it (``yolo11n-pst-gating.yaml``)."""
    base = yaml.safe_load(base_path.read_text())
    d = variant_yaml(base, variant, scale)
    stem = re.sub(r"^(yolo\w*?\d+)", rf"\g<1>{scale}", base_path.stem, count=1)
    if stem == base_path.stem:
        stem = f"{stem}-{scale}"
    path = folder / f"{stem}-{variant.name}.yaml"
    header = f"# pst-yolo ablation variant {variant.name!r} ({variant.what}) of {base_path.name}, scale {scale}\n"
    path.write_text(header + yaml.safe_dump(d, sort_keys=False, default_flow_style=None))
    return path


def count_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def latency_ms(net, imgsz: int, k: int, runs: int = 10, device="cpu") -> float:
    """Median wall time of one fused forward pass on a 1 x 3 x imgsz x imgsz input, fine attention at ``k``."""
    import torch

    from pst_yolo.runtime import set_topk

    net = copy.deepcopy(net).to(device).float().eval()
    net = net.fuse(verbose=False) if hasattr(net, "fuse") else net
    set_topk(net, k)
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            if device != "cpu" and torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            net(x)
            if device != "cpu" and torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= 2:  # warm-up
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def metrics_of(results, task: str) -> tuple[float, float]:
    """(mAP50-95, mAP50) for detection, (top-1, top-5) for classification."""
    if task == "classify":
        return float(results.top1), float(results.top5)
    return float(results.box.map), float(results.box.map50)


def evaluate(weights, data, task, k, imgsz, batch, device, project, name):
    from ultralytics import YOLO

    from pst_yolo.runtime import set_topk

    model = YOLO(str(weights))
    set_topk(model, k)
    r = model.val(data=str(data), imgsz=imgsz, batch=batch, device=device, workers=0, plots=False, verbose=False,
                  project=str(project), name=name, exist_ok=True)
    return metrics_of(r, task)


def run_study(variants="default,gating", data=None, model="yolo11-pst.yaml", scale="n", epochs=3, imgsz=160,
              batch=8, device="cpu", out="runs/pst_ablation", latency_runs=10, **train_args) -> list[dict]:
    """Train and validate each variant; returns one dict per variant and writes table.md / results.json to ``out``.

    Args:
        variants (str | list[str]): Names, see ``parse_variants``.
        data (str | Path | None): Dataset (data YAML, or folder for classification); None = built-in demo data.
        model (str | Path): Base model YAML with PST rows (a path or a shipped name).
        scale (str): Model scale letter.
        epochs, imgsz, batch, device: Training settings (validation uses the same imgsz/batch).
        out (str | Path): Run folder for variant YAMLs, training runs and the table.
        latency_runs (int): Timed forward passes per latency figure.
        **train_args: Extra Ultralytics training arguments (e.g. ``lr0``, ``cfg``).
    """
    from ultralytics import YOLO

    variants = parse_variants(variants)
    out = Path(out).resolve()
    (out / "models").mkdir(parents=True, exist_ok=True)
    base_path = base_yaml(model)
    paths = {v.name: write_variant(base_path, v, scale, out / "models") for v in variants}
    task = YOLO(str(paths[variants[0].name])).task
    if data is None:
        from pst_yolo.data import make_classification_dataset, make_detection_dataset

        data = (make_classification_dataset if task == "classify" else make_detection_dataset)(out / "data")
    trained: dict[str, Path] = {}
    rows = []
    for v in variants:
        if v.train_key not in trained:
            yolo = YOLO(str(paths[v.name]))
            blocks = {len(m.m) for m in yolo.model.modules() if type(m).__name__ == "PST"}
            if blocks != {v.blocks}:
                raise RuntimeError(f"pst-yolo: variant {v.name} built {blocks} PSA blocks, wanted {v.blocks}")
            yolo.train(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device, workers=0,
                       project=str(out / "train"), name=v.name, exist_ok=True, plots=False, verbose=False,
                       **train_args)
            best = Path(yolo.trainer.best)
            trained[v.train_key] = best if best.is_file() else Path(yolo.trainer.last)
        weights = trained[v.train_key]
        net = YOLO(str(weights)).model
        row = {"variant": v.name, "what": v.what, "k": v.k, "params": count_params(net), "weights": str(weights)}
        for label, k in (("fine", v.k), ("coarse", 0)):
            if label == "fine" and k == 0:
                continue
            m1, m2 = evaluate(weights, data, task, k, imgsz, batch, device, out / "val", f"{v.name}-k{k}")
            row[label] = {"m1": m1, "m2": m2, "latency_ms": latency_ms(net, imgsz, k, latency_runs, device)}
        rows.append(row)
    table = markdown_table(rows, task)
    notes = (f"\nBase {base_path.name}, scale {scale}, {epochs} epoch(s) at imgsz {imgsz}, batch {batch}, "
             f"device {device}, data {data}. Latency: median of {latency_runs} fused forward passes, batch 1.\n")
    (out / "table.md").write_text(table + notes)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def _pair(row, key, fmt):
    fine, coarse = row.get("fine"), row["coarse"]
    return f"{fmt.format(fine[key]) if fine else '-'} / {fmt.format(coarse[key])}"


def markdown_table(rows: list[dict], task: str = "detect") -> str:
    """One Markdown table like the paper's Table 4; each metric as ``fine attention on / off``."""
    m1, m2 = ("top-1", "top-5") if task == "classify" else ("mAP50-95", "mAP50")
    lines = [
        f"| variant | setting | k | params (M) | {m1} fine / coarse | {m2} fine / coarse | latency ms fine / coarse |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['what']} | {r['k']} | {r['params'] / 1e6:.3f} | {_pair(r, 'm1', '{:.4f}')} | "
            f"{_pair(r, 'm2', '{:.4f}')} | {_pair(r, 'latency_ms', '{:.1f}')} |"
        )
    return "\n".join(lines) + "\n"
