"""Side-by-side training of several models with identical settings and seeds, through the stock ``yolo`` command.

Every model is trained by ``yolo train`` in its own process (as a user would run it), with the same data, epochs,
image size, batch, seeds and extra arguments; PST models are then validated with fine attention off and on (each k of
``ks``), other models once. The result is a Markdown table (mean, spread and per-seed values, ratio to the baseline)
and a PNG of the learning curves (validation metric per epoch, one line per model: mean over seeds, band = min..max).

    pst-yolo compare yolo11n.yaml yolo11n-pst.yaml yolo12n.yaml --epochs 25 --seeds 0 1

The per-epoch curve is what the trainer validated after each epoch (the EMA model in eval mode, so a PST model runs
with its own k there); the table's figures come from validating the final weights again with each k.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pst_yolo.control import SUFFIX as CONTROL
from pst_yolo.control import control_base, initial_weights
from pst_yolo.runner import STAMP, entry_point

# results.csv columns of the metric the curves show, per task (masks for segmentation, keypoints for pose)
CURVE_COLUMN = {"detect": "metrics/mAP50-95(B)", "obb": "metrics/mAP50-95(B)", "segment": "metrics/mAP50-95(M)",
                "pose": "metrics/mAP50-95(P)", "classify": "metrics/accuracy_top1"}
METRIC_NAMES = {"detect": ("mAP50-95", "mAP50"), "obb": ("mAP50-95", "mAP50"), "classify": ("top-1", "top-5"),
                "segment": ("mask mAP50-95", "mask mAP50"), "pose": ("pose mAP50-95", "pose mAP50")}
RESOLVE_DELTA = 0.03  # the accuracy issue's gain target (1.03 x stock); resolution_note sizes seeds for it
# One fixed colour per model, in order (matplotlib's tab10), so a picture can be checked line by line.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Run:
    """One training run of one model with one seed."""

    label: str
    model: str
    seed: int
    dir: Path
    curve: list = field(default_factory=list)
    # k -> (metric 1, metric 2); k = None for a model without PST layers
    metrics: dict = field(default_factory=dict)
    # further ``yolo train`` arguments of this run alone (a control's ``pretrained=``, pst_yolo.control)
    extra: dict = field(default_factory=dict)


def label_of(model: str) -> str:
    """Short name of a model argument: the file stem of a YAML/weights path or name."""
    return Path(str(model)).stem


def yolo_command() -> list[str]:
    """The stock ``yolo`` entry point of this interpreter's environment."""
    return [entry_point("yolo")]


def train_command(model, data, seed, settings: dict, project: Path, name: str) -> list[str]:
    """``yolo train`` with the comparison's shared settings; later keys of ``settings`` override earlier ones."""
    args = {"model": model, "data": data, "seed": seed, "deterministic": True, "workers": 0, "plots": False,
            **settings, "project": str(project), "name": name, "exist_ok": True}
    return [*yolo_command(), "train", *(f"{k}={v}" for k, v in args.items())]


def read_curve(results_csv: Path, task: str) -> list[float]:
    """The validation metric after each epoch, from Ultralytics' results.csv."""
    column = CURVE_COLUMN[task]
    with open(results_csv, newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    if rows and column not in rows[0]:
        raise ValueError(f"pst-yolo: {results_csv} has no column {column!r} (columns: {list(rows[0])})")
    return [float(r[column]) for r in rows]


def has_pst(net) -> bool:
    from pst_yolo.modules import PyramidSparseAttention

    return any(isinstance(m, PyramidSparseAttention) for m in net.modules())


def validate(weights: Path, data, k: int | None, imgsz: int, batch: int, device: str, task: str):
    """(metric 1, metric 2) of ``weights`` with fine attention at ``k`` (None: a model without PST)."""
    from ultralytics import YOLO

    from pst_yolo.runtime import set_topk

    model = YOLO(str(weights))
    if k is not None:
        set_topk(model, k)
    r = model.val(data=str(data), imgsz=imgsz, batch=batch, device=device, workers=0, plots=False, verbose=False,
                  save_json=False, project=str(weights.parent.parent / "val"), name=f"k{k}", exist_ok=True)
    if task == "classify":
        return float(r.top1), float(r.top5)
    metric = r.seg if task == "segment" else r.pose if task == "pose" else r.box  # masks / keypoints / boxes
    return float(metric.map), float(metric.map50)


def compare(models, data=None, epochs=25, imgsz=128, batch=16, seeds=(0,), ks=(0, 8), out="runs/compare", jobs=1,
            device="cpu", weights="last", reuse=True, val_data=None, progress=None, control=False, pretrain=None,
            pretrain_epochs=None, **train_args) -> dict:
    """Train ``models`` with identical settings for every seed, validate, write table.md, curves.png, results.json.

    Args:
        models (list[str]): Model YAML names or paths (or .pt files to fine-tune), e.g. ``["yolo11n.yaml",
            "yolo11n-pst.yaml"]``. The first model without PST layers is the baseline of the ratio column.
        data (str | Path | None): Data YAML (detection) or folder (classification); None = the built-in detection
            demo data at ``imgsz`` (256 train / 48 val images, like the main job).
        epochs, imgsz, batch, device: Training settings shared by every run (validation uses the same imgsz/batch).
        seeds (tuple[int]): One run per model and seed (``seed=s deterministic=True``).
        ks (tuple[int]): Fine-attention settings validated for PST models (0 = coarse only).
        out (str | Path): Output folder. Running again into it resumes: finished runs with the same arguments are
            reused, unfinished ones start again; other arguments (data, epochs, ...) are refused (``check_settings``).
        jobs (int): Trainings run at the same time (each gets ``cpu_count // jobs`` threads).
        weights (str): ``"last"`` (the final weights: equal budget, no selection on the validation set) or ``"best"``.
        reuse (bool): Reuse finished runs (False: train every run again).
        val_data (str | Path | None): Evaluate the final weights on this data YAML's val split instead of ``data``'s
            (a larger held-out set); the per-epoch curves stay those of ``data``.
        progress (pst_yolo.progress.Progress | None): Where progress goes (default: stdout, bars on a terminal).
        control (bool | str): Add an init-matched control arm ``<label>-control`` after every PST model: its stock
            network started from the PST model's initial weights at each seed (``pst_yolo.control``); the table then
            has a paired section (``paired_table``). ``"only"``: train the control arms alone (the PST and stock arms
            ran elsewhere: merge the folders with ``merge_results`` / ``--summarize``).
        pretrain (str | Path | None): The fine-tuning path: every arm (controls included) starts from one shared stock
            checkpoint, ``pretrained=<it>``. A data YAML trains it once here (the baseline model, or the stock model
            the first PST model replaces, seed 0, ``pretrain_epochs`` epochs, the comparison's other settings) into
            ``<out>/pretrain`` and reuses it on resume; a ``.pt`` file is used as given. Ultralytics transfers every
            tensor whose name and shape match (a new data set's class count re-draws the head's last convs).
        pretrain_epochs (int | None): Epochs of that stock training (default: ``epochs``).
        **train_args: Further ``yolo train`` arguments for every run (e.g. ``close_mosaic=5``, ``pretrained=...``).

    Returns:
        (dict): ``settings``, ``task``, ``baseline`` and ``runs`` (one dict per run with its curve and metrics).

    Raises:
        pst_yolo.runner.Interrupted: Ctrl-C / SIGTERM (every training stopped; run again to resume).
    """
    from ultralytics import YOLO

    from pst_yolo.progress import Progress
    from pst_yolo.runner import Job, run_jobs

    if weights not in ("last", "best"):
        raise ValueError(f"pst-yolo: weights must be 'last' or 'best', got {weights!r}")
    progress = progress or Progress("pst-yolo compare")
    # runs start in their own folder: a relative path to a model file must not depend on it
    models = [str(Path(m).resolve()) if Path(m).is_file() else str(m) for m in models]
    data, val_data = (str(Path(d).resolve()) if d is not None and Path(d).exists() else d for d in (data, val_data))
    labels = [label_of(m) for m in models]
    if not models or len(set(labels)) != len(labels):
        raise ValueError(f"pst-yolo: compare needs distinct models, got {models}")
    seeds = [int(s) for s in seeds]
    ks = sorted({int(k) for k in ks})
    out = Path(out).resolve()
    project = out / "runs"
    task = YOLO(models[0]).task
    if data is None:
        if task != "detect":
            raise ValueError("pst-yolo: built-in comparison data is detection only; pass data= for other tasks")
        from pst_yolo.data import make_detection_dataset

        progress.say("generating the built-in demo data")
        data = str(make_detection_dataset(out / "data", n_train=256, n_val=48, imgsz=imgsz))
    settings = {"epochs": epochs, "imgsz": imgsz, "batch": batch, "device": device, **train_args}
    if pretrain is not None:
        if "pretrained" in train_args:
            raise ValueError("pst-yolo: give either pretrain (a shared stock start) or pretrained=, not both")
        start = shared_start(models, pretrain, int(pretrain_epochs or epochs), settings, out, progress)
        settings = {**settings, "pretrained": start, "pretrain": f"{pretrain}"
                    + (f" ({int(pretrain_epochs or epochs)} epochs)" if not str(pretrain).endswith(".pt") else "")}
    check_settings(out, {**settings, "data": str(data), "val_data": str(val_data or data), "ks": ks,
                         "weights": weights})
    project.mkdir(parents=True, exist_ok=True)
    arms = [(m, lab, None) for m, lab in zip(models, labels)]
    if control:
        arms = control_arms(arms, progress)
        if control == "only":
            arms = [a for a in arms if a[2] is not None]
            if not arms:
                raise ValueError(f"pst-yolo: --control-only needs a PST model among {models}")
        labels = [lab for _, lab, _ in arms]
    runs = []
    for s in seeds:
        for m, lab, pst_model in arms:
            run = Run(lab, m, s, project / f"{lab}-s{s}")
            if pst_model is not None:  # the PST model's initial weights at this seed (made once, reused on resume)
                init = out / "init" / f"{lab}-s{s}.pt"
                if not init.is_file():
                    progress.say(f"initial weights of {label_of(pst_model)} s{s} for {lab}")
                    initial_weights(pst_model, data, s, arm_settings(settings), init)
                run.extra = {"pretrained": str(init)}
            runs.append(run)
    jobs = max(1, min(int(jobs), len(runs)))
    env = training_env(jobs)
    progress.say(f"{len(runs)} training run(s), {jobs} at a time, {epochs} epochs each, into {out}")
    if not reuse:
        for run in runs:
            (run.dir / STAMP).unlink(missing_ok=True)
    run_jobs([Job(f"{r.label} s{r.seed}", train_command(r.model, data, r.seed, {**arm_settings(settings), **r.extra},
                                                        project, r.dir.name), r.dir, int(epochs), project, env,
                  CURVE_COLUMN[task]) for r in runs], jobs, progress, out)
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel("WARNING")  # the progress lines say what is validated; the metrics go into the table
    try:
        for run in runs:
            run.curve = read_curve(run.dir / "results.csv", task)
            w = run.dir / "weights" / f"{weights}.pt"
            pst = has_pst(YOLO(str(w)).model)
            for k in ks if pst else [None]:
                progress.say(f"validating {run.label} s{run.seed} {weights}.pt" + ("" if k is None else f" at k={k}"))
                run.metrics[k] = validate(w, val_data or data, k, imgsz, batch, device, task)
    finally:
        LOGGER.setLevel(level)
    baseline = next((r.label for r in runs if None in r.metrics and not r.label.endswith(CONTROL)), None)
    result = {
        "settings": {**settings, "data": str(data), "val_data": str(val_data or data), "seeds": seeds, "ks": ks,
                     "weights": weights},
        "task": task,
        "models": labels,
        "baseline": baseline,
        "runs": [{**asdict(r), "dir": str(r.dir), "metrics": {str(k): v for k, v in r.metrics.items()}} for r in runs],
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(markdown_table(result))
    plot_curves(result, out / "curves.png")
    return result


MANIFEST = "compare.json"


def training_env(jobs: int) -> dict:
    """Environment of each ``yolo train`` child: the cores shared between ``jobs`` trainings, offline."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs)), "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "False"}


def arm_settings(settings: dict) -> dict:
    """The ``yolo train`` arguments of an arm: the comparison's settings less its own bookkeeping (``pretrain``)."""
    return {k: v for k, v in settings.items() if k != "pretrain"}


def shared_start(models: list, source, epochs: int, settings: dict, out: Path, progress) -> str:
    """The stock checkpoint every arm of a fine-tuning comparison starts from (``compare(pretrain=...)``): ``source``
    itself when it is a ``.pt`` file, else ``<stock>.yaml`` trained on the data YAML ``source`` (seed 0, ``epochs``,
    the comparison's image size, batch, device and extra arguments) into ``<out>/pretrain/<stock>-<data>``, once."""
    from ultralytics import YOLO

    from pst_yolo.runner import Job, run_jobs

    source = Path(source)
    if source.suffix == ".pt":
        if not source.is_file():
            raise ValueError(f"pst-yolo: pretrain checkpoint {source} does not exist")
        return str(source.resolve())
    if not source.is_file():
        raise ValueError(f"pst-yolo: pretrain data {source} does not exist (a data YAML, or a stock .pt to start from)")
    stock = next((m for m in models if not has_pst(YOLO(m).model)), None) or control_base(models[0])
    name = f"{label_of(stock)}-{source.parent.name if source.stem == 'data' else source.stem}"
    project = out.resolve() / "pretrain"
    run_dir = project / name
    train = {**{k: v for k, v in settings.items() if k != "pretrained"}, "epochs": epochs}
    env = training_env(1)
    progress.say(f"the shared start: {label_of(stock)} trained {epochs} epochs on {source} (seed 0), once")
    project.mkdir(parents=True, exist_ok=True)
    run_jobs([Job(f"pretrain {name}", train_command(stock, str(source.resolve()), 0, train, project, name), run_dir,
                  epochs, project, env, None)], 1, progress, out)
    return str(run_dir / "weights" / "last.pt")


def control_arms(arms: list, progress) -> list:
    """``arms`` ((model, label, None) each) with an init-matched control (stock model, ``<label>-control``, the PST
    model) after every PST model; a PST model without a stock counterpart is refused (``control_base``)."""
    from ultralytics import YOLO

    out = []
    for model, label, _ in arms:
        out.append((model, label, None))
        if has_pst(YOLO(model).model):
            base = control_base(model)
            progress.say(f"control of {label}: {base} from {label}'s initial weights at each seed")
            out.append((base, label + CONTROL, model))
    return out


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix runs of other arguments into ``out``: its ``compare.json`` (written on the first run) must hold
    the same settings; models and seeds may differ (each run is a folder of its own)."""
    path = out / MANIFEST
    normal = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = sorted(k for k in stored.keys() | normal.keys() if stored.get(k) != normal.get(k))
        if diff:
            was = ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={normal.get(k)!r}" for k in diff)
            raise ValueError(f"output folder {out} holds a comparison with other arguments ({was}; now {now}); give "
                             "another output folder (--out), or delete that one to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(normal, indent=1))


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary_rows(result: dict) -> list[dict]:
    """One row per (model, k): mean/std/per-seed of both metrics, in model order, k ascending."""
    rows = []
    for label in result["models"]:
        runs = [r for r in result["runs"] if r["label"] == label]
        for k in runs[0]["metrics"]:
            m1 = [r["metrics"][k][0] for r in runs]
            m2 = [r["metrics"][k][1] for r in runs]
            rows.append({"model": label, "k": None if k == "None" else int(k), "m1": m1, "m2": m2,
                         "seeds": [r["seed"] for r in runs]})
    return rows


def markdown_table(result: dict) -> str:
    """The comparison as Markdown: mean +- std over seeds, the per-seed values, the ratio to the baseline, and the worst
    seed (its ratio to the baseline's worst): a mean can hide a seed that fails."""
    n1, n2 = METRIC_NAMES[result["task"]]
    rows = summary_rows(result)
    base = next((r for r in rows if r["model"] == result["baseline"]), None)
    base_mean, base_worst = (statistics.fmean(base["m1"]), min(base["m1"])) if base else (None, None)
    s = result["settings"]
    lines = [
        (f"| model | fine attention | {n1} (mean ± std) | {n2} (mean ± std) | {n1} per seed | "
         f"vs {result['baseline'] or 'baseline'} | worst seed (vs worst) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m1, sd1 = _stats(r["m1"])
        m2, sd2 = _stats(r["m2"])
        fine = "-" if r["k"] is None else ("off (k=0)" if r["k"] == 0 else f"on (k={r['k']})")
        ratio = f"{m1 / base_mean:.2f}" if base_mean else "-"
        per_seed = ", ".join(f"{v:.4f}" for v in r["m1"])
        worst = f"{min(r['m1']):.4f}" + (f" ({min(r['m1']) / base_worst:.2f})" if base_worst else "")
        lines.append(f"| {r['model']} | {fine} | {m1:.4f} ± {sd1:.4f} | {m2:.4f} ± {sd2:.4f} | {per_seed} | {ratio} | "
                     f"{worst} |")
    shown = ("epochs", "imgsz", "batch", "device", "data", "val_data", "seeds", "ks", "weights")
    extra = ", ".join(f"{k}={v}" for k, v in s.items() if k not in shown) or "none"
    held_out = f", evaluated on {s['val_data']}" if s.get("val_data", s["data"]) != s["data"] else ""
    lines += ["", (f"{s['epochs']} epochs, imgsz {s['imgsz']}, batch {s['batch']}, device {s['device']}, seeds "
                   f"{s['seeds']}, {s['weights']}.pt weights, data {s['data']}{held_out}; extra train args: {extra}.")]
    paired = paired_table(result)
    return "\n".join(lines) + "\n" + ("\n" + paired if paired else "")


PAIRED_DELTA = 0.02  # the effect a paired comparison is sized for (2% of the baseline's mean)


def paired_seeds(diffs: list[float], scale: float, delta: float = PAIRED_DELTA, z: float = 2.0) -> int | None:
    """Seeds for a mean paired difference of ``delta * scale`` to lie ``z`` standard errors from 0, given the spread
    of the per-seed differences ``diffs`` (standard error ``sd / sqrt(n)``); None with fewer than two seeds."""
    if len(diffs) < 2 or scale <= 0:
        return None
    return max(2, math.ceil((z * statistics.stdev(diffs) / (delta * scale)) ** 2))


def paired_table(result: dict) -> str:
    """Per PST model with a control arm, seed by seed: PST - control (what the PST did on that initialisation) and
    control - baseline (what re-drawing the initialisation did), then mean ± std, the worst seed and the seeds the
    paired difference needs to resolve a 2% effect. Empty when the comparison has no control arm."""
    by = {(r["label"], r["seed"]): r["metrics"] for r in result["runs"]}
    base = result.get("baseline")
    n1 = METRIC_NAMES[result["task"]][0]
    lines = []
    for label in result["models"]:
        ctrl = label + CONTROL
        if ctrl not in result["models"]:
            continue
        seeds = sorted(s for (lab, s) in by if lab == label and (ctrl, s) in by)
        ks = [k for k in by[(label, seeds[0])]] if seeds else []
        for k in ks:
            d_pst = [by[(label, s)][k][0] - by[(ctrl, s)]["None"][0] for s in seeds]
            d_init = [by[(ctrl, s)]["None"][0] - by[(base, s)]["None"][0] for s in seeds if (base, s) in by]
            scale = statistics.fmean(by[(base, s)]["None"][0] for s in seeds if (base, s) in by) if d_init else \
                statistics.fmean(by[(ctrl, s)]["None"][0] for s in seeds)
            r_ctrl = [_ratio(by[(label, s)][k][0], by[(ctrl, s)]["None"][0]) for s in seeds]
            r_base = [_ratio(by[(label, s)][k][0], by[(base, s)]["None"][0]) if (base, s) in by else None
                      for s in seeds]
            if not lines:
                b = base or "baseline"
                lines = [f"Paired by seed ({n1}; control: the stock network on the PST model's initialisation, "
                         "pst_yolo.control):", "",
                         f"| model | fine attention | seed | PST - control | PST / control | control - {b} | "
                         f"PST / {b} |", "|---|---|---:|---:|---:|---:|---:|"]
            fine = "off (k=0)" if k == "0" else f"on (k={k})"
            for i, s in enumerate(seeds):
                init = f"{d_init[i]:+.4f}" if len(d_init) == len(seeds) else ""
                lines.append(f"| {label} | {fine} | {s} | {d_pst[i]:+.4f} | {_fmt(r_ctrl[i])} | {init} | "
                             f"{_fmt(r_base[i])} |")
            m, sd = _stats(d_pst)
            need = paired_seeds(d_pst, scale)
            init_summary = ""
            if len(d_init) == len(seeds):
                mi, sdi = _stats(d_init)
                init_summary = f"{mi:+.4f} ± {sdi:.4f}, worst {min(d_init):+.4f}"
            lines.append(f"| {label} | {fine} | mean ± std, worst | {m:+.4f} ± {sd:.4f}, worst {min(d_pst):+.4f} | "
                         f"{_mean_worst(r_ctrl, seeds)} | {init_summary} | {_mean_worst(r_base, seeds)} |")
            lines.append(f"| {label} | {fine} | seeds for a {PAIRED_DELTA:.0%} effect | "
                         f"{'-' if need is None else need} | | | |")
    return "\n".join(lines) + "\n" if lines else ""


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _fmt(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def _mean_worst(ratios: list, seeds: list) -> str:
    """``mean 0.97, worst 0.87 (seed 1)`` of per-seed ratios (empty when a seed has none)."""
    if not ratios or None in ratios:
        return ""
    i = min(range(len(ratios)), key=ratios.__getitem__)
    return f"mean {statistics.fmean(ratios):.2f}, worst {ratios[i]:.2f} (seed {seeds[i]})"


def _load(result) -> dict:
    return result if isinstance(result, dict) else json.loads((Path(result) / "results.json").read_text())


def merge_results(parts) -> dict:
    """Comparisons of one data set and budget that ran separately (other seeds, other models, one lane each) as one.

    Args:
        parts (list): ``compare()`` results or folders holding their results.json; the settings must agree except
            for the seeds. The baseline is the first part's that has one.

    Raises:
        ValueError: naming the part whose task or settings differ from the first's, or the part that repeats a
            model and seed.
    """
    loaded = [(str(p) if not isinstance(p, dict) else f"part {i + 1}", _load(p)) for i, p in enumerate(parts)]
    name0, first = loaded[0]
    merged, seen = {**first, "models": [], "runs": [], "baseline": None}, {}
    for name, r in loaded:
        if r["task"] != first["task"]:
            raise ValueError(f"merge: {name} is a {r['task']} comparison, {name0} a {first['task']} one")
        a = {k: v for k, v in first.get("settings", {}).items() if k != "seeds"}
        b = {k: v for k, v in r.get("settings", {}).items() if k != "seeds"}
        if a != b:
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ValueError(f"merge: {name} differs from {name0} in {', '.join(diff)} "
                             f"({[b.get(k) for k in diff]} vs {[a.get(k) for k in diff]})")
        for run in r["runs"]:
            key = (run["label"], run["seed"])
            if key in seen:
                raise ValueError(f"merge: {run['label']} seed {run['seed']} is in both {seen[key]} and {name}")
            seen[key] = name
            merged["runs"].append(run)
        merged["models"] += [m for m in r["models"] if m not in merged["models"]]
        merged["baseline"] = merged["baseline"] or r.get("baseline")
    merged["settings"] = {**merged.get("settings", {}),
                          "seeds": sorted({run["seed"] for run in merged["runs"]})}
    return merged


def summary_table(results: dict) -> str:
    """Several comparisons side by side (one column per data set), as Markdown: per model and k the mean ± std over
    seeds, the ratio to that data set's baseline, the mean of the ratios, and per set the worst seed's ratio to the
    baseline's worst seed. Below the table, what it can resolve (``resolution_note``): the baselines' seed noise and the
    seeds per model a 3% difference needs.

    Args:
        results (dict): data set name -> ``compare()``'s result, a folder holding its results.json, or a list of
            those to merge first (``merge_results``).
    """
    loaded = {name: merge_results(r if isinstance(r, (list, tuple)) else [r]) for name, r in results.items()}
    cells, order = {}, []
    for name, result in loaded.items():
        rows = summary_rows(result)
        base = next((r["m1"] for r in rows if r["model"] == result["baseline"] and r["k"] is None), None)
        for r in rows:
            key = (r["model"], r["k"])
            if key not in order:
                order.append(key)
            mean, sd = _stats(r["m1"])
            cells[key, name] = (mean, sd, len(r["m1"]), mean / statistics.fmean(base) if base else None,
                                min(r["m1"]) / min(base) if base and min(base) > 0 else None)
    names = list(loaded)
    metric = METRIC_NAMES[next(iter(loaded.values()))["task"]][0]
    head = " | ".join(f"{n}: {metric} (seeds) | ratio" for n in names)
    worst = " | ".join(f"{n}: worst seed ratio" for n in names)
    lines = [f"| model | fine attention | {head} | mean ratio | {worst} |",
             "|---|---|" + "---:|---:|" * len(names) + "---:|" + "---:|" * len(names)]
    for model, k in order:
        row, ratios = [], []
        for n in names:
            c = cells.get(((model, k), n))
            if c is None:
                row += ["", ""]
                continue
            row += [f"{c[0]:.4f} ± {c[1]:.4f} ({c[2]})", "" if c[3] is None else f"{c[3]:.2f}"]
            ratios.append(c[3])
        fine = "-" if k is None else ("off (k=0)" if k == 0 else f"on (k={k})")
        full = ratios and None not in ratios and len(ratios) == len(names)
        mean_ratio = f"{statistics.fmean(ratios):.3f}" if full else ""
        worsts = [cells.get(((model, k), n)) for n in names]
        worsts = ["" if c is None or c[4] is None else f"{c[4]:.2f}" for c in worsts]
        lines.append(f"| {model} | {fine} | " + " | ".join(row) + f" | {mean_ratio} | " + " | ".join(worsts) + " |")
    noise = {n: cells.get(((loaded[n]["baseline"], None), n)) for n in names}
    paired = "".join(f"\n{n}: {p}" for n in names if (p := paired_table(loaded[n])))
    return "\n".join(lines) + "\n" + resolution_note(
        {n: (c[1] / c[0], c[2]) for n, c in noise.items() if c and c[0] > 0 and c[2] > 1}) + paired


def seeds_to_resolve(rel_std: float, delta: float = RESOLVE_DELTA, z: float = 2.0) -> int:
    """Seeds per model for a ratio of ``1 + delta`` to lie ``z`` standard errors from 1: two independent means,
    each with seed std ``rel_std`` (relative to the mean), differ with standard error ``rel_std * sqrt(2 / n)``."""
    if delta <= 0 or z <= 0 or rel_std < 0:
        raise ValueError(f"seeds_to_resolve: needs delta > 0, z > 0, rel_std >= 0; got {delta=}, {z=}, {rel_std=}")
    return max(2, math.ceil(2 * (z * rel_std / delta) ** 2))


def resolution_note(noise: dict) -> str:
    """What the table can tell apart: the baseline's seed std per data set and the seeds a ratio of 1.03 needs.

    Args:
        noise (dict): data set name -> (baseline std / mean over seeds, number of seeds).
    """
    if not noise:
        return ""
    parts = [f"{n} {sd:.1%} ({seeds} seeds) -> {seeds_to_resolve(sd)}" for n, (sd, seeds) in noise.items()]
    note = (f"\nBaseline seed noise (std / mean) and the seeds per model for a ratio of {1 + RESOLVE_DELTA:.2f} to lie 2 "
            f"standard errors from 1.00: " + "; ".join(parts))
    if len(noise) > 1:  # the mean of the ratios averages the sets' noise
        avg = math.sqrt(sum(sd**2 for sd, _ in noise.values())) / len(noise)
        note += f"; the mean ratio -> {seeds_to_resolve(avg)}"
    return note + ".\n"


def plot_curves(result: dict, path: Path) -> dict:
    """Learning curves (validation metric per epoch): per model the mean over seeds and a min..max band.

    Returns:
        (dict): model label -> the colour (hex) its line was drawn with.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    colors = {}
    for i, label in enumerate(result["models"]):
        curves = [r["curve"] for r in result["runs"] if r["label"] == label]
        n = min(len(c) for c in curves)
        a = np.array([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        colors[label] = COLORS[i % len(COLORS)]
        ax.plot(x, a.mean(0), color=colors[label], lw=2, label=f"{label} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            ax.fill_between(x, a.min(0), a.max(0), color=colors[label], alpha=0.2, lw=0)
    s = result["settings"]
    ax.set(xlabel="epoch", ylabel=f"val {METRIC_NAMES[result['task']][0]}",
           title=f"{s['epochs']} epochs, imgsz {s['imgsz']}, seeds {s['seeds']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return colors


def parse_train_args(items) -> dict:
    """``key=value`` strings (as on the ``yolo`` command line) to a dict; values stay strings."""
    out = {}
    for item in items or []:
        if not re.fullmatch(r"[A-Za-z_]\w*=.*", item):
            raise ValueError(f"pst-yolo: extra training argument must be key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out
