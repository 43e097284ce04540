"""The side-by-side comparison tool (pst_yolo.compare, pst-yolo compare): real trainings through the stock `yolo`
command, a Markdown table with the stock baseline, and a learning-curve PNG with one line per model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pst_yolo.runner import entry_point

REPO = Path(__file__).resolve().parents[1]
PST_YOLO = entry_point("pst-yolo")  # the installed command next to this interpreter


@pytest.mark.slow
def test_compare_trains_two_models_and_writes_table_and_curves(tmp_path):
    import cv2

    from pst_yolo.compare import COLORS
    from pst_yolo.data import make_detection_dataset

    data = make_detection_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64)
    out = tmp_path / "cmp"
    cmd = [PST_YOLO, "compare", "yolo11n.yaml", "yolo11n-pst.yaml", "--data", str(data),
           "--epochs", "1", "--imgsz", "64", "--batch", "4", "--seeds", "0", "--k", "0", "8", "--jobs", "2",
           "--out", str(out), "--train", "mosaic=0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]

    result = json.loads((out / "results.json").read_text())
    assert result["baseline"] == "yolo11n" and result["models"] == ["yolo11n", "yolo11n-pst"]
    runs = {r["label"]: r for r in result["runs"]}
    assert set(runs["yolo11n"]["metrics"]) == {"None"} and set(runs["yolo11n-pst"]["metrics"]) == {"0", "8"}
    for r in runs.values():
        assert len(r["curve"]) == 1  # one value per epoch, from the run's results.csv
        args = (Path(r["dir"]) / "args.yaml").read_text()
        assert "epochs: 1" in args and "imgsz: 64" in args and "seed: 0" in args and "mosaic: 0" in args

    table = (out / "table.md").read_text()
    assert table in p.stdout
    rows = [line for line in table.splitlines() if line.startswith("| yolo11n")]
    assert [r.split("|")[1:3] for r in rows] == [[" yolo11n ", " - "], [" yolo11n-pst ", " off (k=0) "],
                                                 [" yolo11n-pst ", " on (k=8) "]]

    img = cv2.imread(str(out / "curves.png"))  # a valid PNG with one line per model, each in its own colour
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    for hex_color in COLORS[:2]:
        bgr = np.array([int(hex_color[i : i + 2], 16) for i in (5, 3, 1)])
        assert (np.abs(img.astype(int) - bgr).sum(-1) < 30).sum() > 20, hex_color
    assert (np.abs(img.astype(int) - np.array([int(COLORS[2][i : i + 2], 16) for i in (5, 3, 1)])).sum(-1) < 30).sum() < 5


def test_table_reports_mean_std_and_ratio_to_baseline():
    from pst_yolo.compare import markdown_table

    result = {
        "task": "detect", "models": ["stock", "pst"], "baseline": "stock",
        "settings": {"epochs": 3, "imgsz": 64, "batch": 4, "device": "cpu", "data": "d.yaml", "seeds": [0, 1],
                     "ks": [0, 8], "weights": "last"},
        "runs": [
            {"label": "stock", "seed": 0, "metrics": {"None": [0.20, 0.40]}},
            {"label": "pst", "seed": 0, "metrics": {"0": [0.21, 0.41], "8": [0.22, 0.42]}},
            {"label": "stock", "seed": 1, "metrics": {"None": [0.30, 0.50]}},
            {"label": "pst", "seed": 1, "metrics": {"0": [0.29, 0.49], "8": [0.28, 0.48]}},
        ],
    }
    table = markdown_table(result)
    assert "| stock | - | 0.2500 ± 0.0707 | 0.4500 ± 0.0707 | 0.2000, 0.3000 | 1.00 |" in table
    assert "| pst | on (k=8) | 0.2500 ± 0.0424 | 0.4500 ± 0.0424 | 0.2200, 0.2800 | 1.00 |" in table
    assert "seeds [0, 1]" in table


def test_summary_puts_data_sets_side_by_side_with_each_baseline(tmp_path):
    from pst_yolo.compare import summary_table

    def result(stock, pst8):
        return {"task": "detect", "models": ["stock", "pst"], "baseline": "stock",
                "runs": [{"label": "stock", "seed": s, "metrics": {"None": [v, 0.0]}} for s, v in enumerate(stock)]
                + [{"label": "pst", "seed": s, "metrics": {"8": [v, 0.0]}} for s, v in enumerate(pst8)]}

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps(result([0.4, 0.6], [0.45, 0.55])))
    table = summary_table({"a": result([0.2, 0.2, 0.2], [0.22, 0.20, 0.24]), "b": tmp_path / "b"})
    assert "| stock | - | 0.2000 ± 0.0000 (3) | 1.00 | 0.5000 ± 0.1414 (2) | 1.00 | 1.000 |" in table
    assert "| pst | on (k=8) | 0.2200 ± 0.0200 (3) | 1.10 | 0.5000 ± 0.0707 (2) | 1.00 | 1.050 |" in table
    # what the table can resolve: set b's stock spread is 28% of its mean over 2 seeds
    assert ("seeds per model for a ratio of 1.03 to lie 2 standard errors from 1.00: a 0.0% (3 seeds) -> 2; "
            "b 28.3% (2 seeds) -> 712; the mean ratio -> 178.") in table


def test_seeds_to_resolve_is_the_two_sample_standard_error():
    from pst_yolo.compare import seeds_to_resolve

    # a 3% seed std: 8 seeds per model put a 3% difference at 2 standard errors (0.03 * sqrt(2 / 8) = 0.015)
    assert seeds_to_resolve(0.03) == 8
    assert seeds_to_resolve(0.03, delta=0.06) == 2 and seeds_to_resolve(0.06) == 32
    assert seeds_to_resolve(0.03, z=1.0) == 2
    with pytest.raises(ValueError, match="delta > 0"):
        seeds_to_resolve(0.03, delta=0)


def _result(stock, pst8, seeds=None, epochs=25, baseline="stock"):
    seeds = seeds or list(range(len(stock or pst8)))
    models = (["stock"] if stock else []) + (["pst"] if pst8 else [])
    return {"task": "detect", "models": models, "baseline": baseline if stock else None,
            "settings": {"epochs": epochs, "imgsz": 128, "seeds": seeds},
            "runs": [{"label": "stock", "seed": s, "metrics": {"None": [v, 0.0]}} for s, v in zip(seeds, stock or [])]
            + [{"label": "pst", "seed": s, "metrics": {"8": [v, 0.0]}} for s, v in zip(seeds, pst8 or [])]}


def test_summary_merges_comparisons_run_separately_and_the_cli_takes_comma_lists(tmp_path):
    from pst_yolo.compare import merge_results

    # seeds 0-1 of both models in one run, seed 2 of each model in a run of its own (as two CPU lanes would)
    parts = {"a": _result([0.2, 0.3], [0.25, 0.35]), "b": _result([0.4], None, seeds=[2]),
             "c": _result(None, [0.45], seeds=[2])}
    for name, r in parts.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    merged = merge_results([tmp_path / n for n in "abc"])
    assert merged["baseline"] == "stock" and merged["models"] == ["stock", "pst"]
    assert merged["settings"]["seeds"] == [0, 1, 2] and len(merged["runs"]) == 6

    folders = ",".join(str(tmp_path / n) for n in "abc")
    p = subprocess.run([PST_YOLO, "compare", "--summarize", f"demo={folders}",
                        f"one={tmp_path / 'a'}"], capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| stock | - | 0.3000 ± 0.1000 (3) | 1.00 | 0.2500 ± 0.0707 (2) | 1.00 | 1.000 |" in p.stdout
    assert "| pst | on (k=8) | 0.3500 ± 0.1000 (3) | 1.17 | 0.3000 ± 0.0707 (2) | 1.20 | 1.183 |" in p.stdout
    assert "demo 33.3% (3 seeds) -> 988; one 28.3% (2 seeds) -> 712; the mean ratio -> 425." in p.stdout


def test_merge_refuses_other_budgets_and_repeated_seeds_naming_the_folder(tmp_path):
    from pst_yolo.compare import merge_results

    for name, r in {"e25": _result([0.2], [0.3]), "e60": _result([0.4], [0.5], seeds=[1], epochs=60)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match=r"e60 differs from .*e25 in epochs \(\[60\] vs \[25\]\)"):
        merge_results([tmp_path / "e25", tmp_path / "e60"])
    with pytest.raises(ValueError, match=r"stock seed 0 is in both part 1 and part 2"):
        merge_results([_result([0.2], None), _result([0.3], None)])
    p = subprocess.run([PST_YOLO, "compare", "--summarize", "demo"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 2 and "--summarize takes NAME=OUT[,OUT...], got 'demo'" in p.stderr
    p = subprocess.run([PST_YOLO, "compare", "--summarize",
                        f"demo={tmp_path / 'e25'},{tmp_path / 'e60'}"], capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 2 and "e60 differs from" in p.stderr and "Traceback" not in p.stderr


def test_tables_report_the_worst_seed_against_the_baselines_worst():
    """A mean hides a seed that fails: both tables give each row's worst seed and its ratio to the baseline's worst."""
    from pst_yolo.compare import markdown_table, summary_table

    result = _result([0.50, 0.52, 0.48], [0.55, 0.30, 0.53])  # pst: a better mean but one failed seed
    result["settings"].update(batch=4, device="cpu", data="d.yaml", ks=[8], weights="last")
    table = markdown_table(result)
    assert table.splitlines()[0].endswith("| worst seed (vs worst) |")
    assert "| stock | - | 0.5000 ± 0.0200 |" in table and table.splitlines()[2].endswith("| 0.4800 (1.00) |")
    assert table.splitlines()[3].endswith("| 0.3000 (0.62) |")
    summary = summary_table({"a": result})
    assert "| pst | on (k=8) | 0.4600 ± 0.1389 (3) | 0.92 | 0.920 | 0.62 |" in summary
