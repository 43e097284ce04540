"""The sixth look's tables (docs/accuracy.md) from the study's output folders: per data set and seed, stock yolo11n,
the paper's layout (yolo11n-pst) and the recommended yolo11n-pst-res, k=0 and k=8 on the same weights (both fusions),
the fine setting the trainer would store, best.pt, and the final training losses.

    python docs/accuracy/sixth_look.py STUDY_DIR      # STUDY_DIR holds out/<set>/<model>-s<seed>/, fc/, fcval/

out/<set>/<model>-s<seed>/ is one ``pst-yolo compare`` run (the trainer's curves and the final weights, re-validated on
the held-out test split); fc/<set>-<model>-s<seed>-<last|best>.json are ``pst-yolo finecheck --out`` results on the
test split, fcval/ the same on the trainer's own validation split (k=0 and joint k=8: the end-of-training choice).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

SETS = ("demo", "clutter", "photos", "lookalike")
SEEDS = range(6)
TOLERANCE = 0.005


def _fc(root: Path, folder: str, set_: str, model: str, seed: int, weights: str = "last"):
    """One checkpoint's {setting: (mAP50-95, mAP50)}; on the test split (fc/) merged with fcl/, the per-layer
    settings of the checkpoints whose full run left them out."""
    found = {}
    for sub in (folder, "fcl") if folder == "fc" else (folder,):
        path = root / sub / f"{set_}-{model}-s{seed}-{weights}.json"
        if path.is_file():
            found = {**json.loads(path.read_text())[0]["map"], **found}
    return found or None


def stored(val: dict) -> str:
    """The setting the trainer stores (pst_yolo.training.settings): the best validation mAP50-95 among joint k=8 in
    every PST layer, in each alone, and k=0; the first of that order at a tie."""
    order = ["joint k=8", *sorted(n for n in val if n.startswith("joint k=8 layer")), "k=0"]
    return max((n for n in order if n in val), key=lambda n: (val[n][0], -order.index(n)))


def _stock(root: Path, set_: str, seed: int):
    path = root / "out" / set_ / f"stock-s{seed}" / "results.json"
    return json.loads(path.read_text())["runs"][0]["metrics"]["None"][0] if path.is_file() else None


def _losses(root: Path, set_: str, model: str, seed: int):
    """(train cls loss, val cls loss) of the last epoch."""
    runs = list((root / "out" / set_ / f"{model}-s{seed}" / "runs").glob("*/results.csv"))
    if not runs:
        return None
    with open(runs[0]) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return float(rows[-1]["train/cls_loss"]), float(rows[-1]["val/cls_loss"])


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return "", "", ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}", f"{min(values):.4f}", f"{sd / statistics.fmean(values):.1%}"


COLS = ["stock", "paper k=0", "paper add k=8", "paper joint k=8", "paper stored", "paper best.pt k=0",
        "paper best.pt joint k=8", "res k=0", "res joint k=8", "res stored"]


def _rows(root: Path, set_: str) -> dict:
    """{seed: {column: mAP50-95}} of one data set (seeds with any result)."""
    rows = {}
    for seed in SEEDS:
        row = {"stock": _stock(root, set_, seed)}
        for model in ("paper", "res"):
            test, val = _fc(root, "fc", set_, model, seed), _fc(root, "fcval", set_, model, seed)
            if test:
                row[f"{model} k=0"], row[f"{model} joint k=8"] = test["k=0"][0], test["joint k=8"][0]
                row[f"{model} add k=8"] = test.get("add k=8", [None])[0]
                if val and stored(val) in test:  # what the trainer stores, chosen on its own validation split
                    row[f"{model} stored"] = test[stored(val)][0]
        best = _fc(root, "fc", set_, "paper", seed, "best")
        if best:
            row["paper best.pt k=0"], row["paper best.pt joint k=8"] = best["k=0"][0], best["joint k=8"][0]
        if any(v is not None for v in row.values()):
            rows[seed] = row
    return rows


def per_set(root: Path, set_: str) -> str:
    """One data set: a row per seed, then mean ± std, worst, and the seed spread."""
    lines = ["| seed | " + " | ".join(COLS) + " | train cls loss (stock / paper / res) |",
             "|---:|" + "---:|" * len(COLS) + "---|"]
    rows = _rows(root, set_)
    for seed, row in rows.items():
        losses = [_losses(root, set_, m, seed) for m in ("stock", "paper", "res")]
        cells = ["" if row.get(c) is None else f"{row[c]:.4f}" for c in COLS]
        loss = " / ".join("" if x is None else f"{x[0]:.3f}" for x in losses)
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {loss} |")
    mean, worst, spread = zip(*(_stats([row.get(c) for row in rows.values()]) for c in COLS))
    lines += ["| **mean ± std** | " + " | ".join(mean) + " | |", "| **worst** | " + " | ".join(worst) + " | |",
              "| **std / mean** | " + " | ".join(spread) + " | |"]
    return "\n".join(lines) + "\n"


def targets(root: Path) -> str:
    """Per data set, the stored setting of each PST model against stock over the seeds both have: mean ratio (target
    >= 1.00 for the recommended model) and worst-seed ratio (target >= 0.95)."""
    lines = ["| data set | seeds | stock mean / worst | res stored mean / worst | res: mean ratio | res: worst ratio | "
             "paper stored: mean ratio | paper: worst ratio |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for set_ in SETS:
        rows = [r for r in _rows(root, set_).values() if None not in (r.get("stock"), r.get("res stored"))]
        if not rows:
            continue
        stock, res = [r["stock"] for r in rows], [r["res stored"] for r in rows]
        paper = [r["paper stored"] for r in rows if r.get("paper stored") is not None]
        ratio = statistics.fmean(res) / statistics.fmean(stock)
        worst = min(res) / min(stock)
        cells = [f"{statistics.fmean(stock):.4f} / {min(stock):.4f}", f"{statistics.fmean(res):.4f} / {min(res):.4f}",
                 f"{ratio:.2f}" + ("" if ratio >= 1.0 else " (below)"), f"{worst:.2f}" + ("" if worst >= 0.95 else " (below)")]
        if len(paper) == len(rows):
            cells += [f"{statistics.fmean(paper) / statistics.fmean(stock):.2f}", f"{min(paper) / min(stock):.2f}"]
        else:
            cells += ["", ""]
        lines.append(f"| {set_} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def control(root: Path, set_: str = "lookalike") -> str:
    """The slow-tail control: yolo11n-pst-res with its PST built but not added (resid), next to stock and res, k=0."""
    def final(model, seed):
        path = root / "out" / set_ / f"{model}-s{seed}" / "results.json"
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text())["runs"][0]["metrics"]
        return (metrics.get("0") or metrics.get("None"))[0]

    lines = ["| seed | stock | res (PST branch added) | resid (same initialisation, branch not added) |",
             "|---:|---:|---:|---:|"]
    for seed in SEEDS:
        values = [final(m, seed) for m in ("stock", "res", "resid")]
        if values[2] is not None:
            lines.append(f"| {seed} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def costs(root: Path) -> str:
    """Every checkpoint's k=8 - k=0 (both fusions) and the stored setting's: mean, worst, how often within -0.005."""
    diffs = {}
    for set_ in SETS:
        for seed in SEEDS:
            for model in ("paper", "res"):
                for weights in ("last", "best"):
                    test = _fc(root, "fc", set_, model, seed, weights)
                    if not test:
                        continue
                    for fusion in ("add", "joint"):
                        if f"{fusion} k=8" in test:
                            diff = test[f"{fusion} k=8"][0] - test["k=0"][0]
                            diffs.setdefault((model, f"{fusion} k=8"), []).append(diff)
                    val = _fc(root, "fcval", set_, model, seed, weights)
                    if val and stored(val) in test:
                        diffs.setdefault((model, "stored (chosen per layer on the validation split)"), []).append(
                            test[stored(val)][0] - test["k=0"][0])
    lines = ["| model | setting | checkpoints | k=8 - k=0: mean | worst | within -0.005 |",
             "|---|---|---:|---:|---:|---:|"]
    for (model, setting), d in sorted(diffs.items()):
        lines.append(f"| {model} | {setting} | {len(d)} | {statistics.fmean(d):+.4f} | {min(d):+.4f} | "
                     f"{sum(x >= -TOLERANCE for x in d)}/{len(d)} |")
    return "\n".join(lines) + "\n"


def diagnosis(root: Path) -> str:
    """Paper-layout last.pt checkpoints with the full finecheck (per layer, BN re-estimation, activation shift): the
    range over checkpoints of each setting's k=8 - k=0 and of each layer's PSA-output shift (mean shift in coarse-only
    stds, std ratio)."""
    diffs, shifts = {}, {}
    for path in sorted((root / "fc").glob("*-paper-s*-last.json")):
        result = json.loads(path.read_text())[0]
        found = result["map"]
        extra = root / "fcl" / path.name
        if extra.is_file():
            found = {**json.loads(extra.read_text())[0]["map"], **found}
        for name, (value, _) in found.items():
            if name != "k=0":
                diffs.setdefault(name, []).append(value - found["k=0"][0])
        for fusion, layers in result.get("shift", {}).items():
            for layer, stats in layers.items():
                shifts.setdefault((fusion, layer), []).append(stats["psa"])
    lines = ["| setting | checkpoints | k=8 - k=0: from | to |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {len(d)} | {min(d):+.4f} | {max(d):+.4f} |" for n, d in sorted(diffs.items())]
    lines += ["", "| fusion | layer | checkpoints | PSA output mean shift / std | std ratio |", "|---|---|---:|---|---|"]
    lines += [f"| {f} | {layer} | {len(v)} | {min(a for a, _ in v):.2f}-{max(a for a, _ in v):.2f} | "
              f"{min(b for _, b in v):.2f}-{max(b for _, b in v):.2f} |" for (f, layer), v in sorted(shifts.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for set_ in SETS:
        print(f"### {set_}\n\n{per_set(root, set_)}")
    print(f"### Fine attention's cost per checkpoint\n\n{costs(root)}")
    print(f"### Against stock (the stored setting)\n\n{targets(root)}")
    print(f"### Diagnosis (paper layout, last.pt)\n\n{diagnosis(root)}")
    print(f"### The slow-tail control (lookalike)\n\n{control(root)}")
