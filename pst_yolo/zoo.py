"""The shipped PST models (cfg/models) and the paper rows they reproduce, in one table.

Used by ``pst-yolo models`` (fidelity table) and the zoo tests. Paper figures: Tables 1-3 of Hu et al.
(parameters in millions, GFLOPs as printed in the paper). ``asserted`` marks rows whose parameter count must land within
``TOLERANCE`` of the paper (every S, M and ResNet row of Tables 1-3); the paper's N rows are not self-consistent and are
reported only (see docs/model_zoo.md). Segmentation, pose and OBB models have no paper row (beyond the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.02  # relative parameter-count tolerance for the asserted rows


@dataclass(frozen=True)
class ZooModel:
    name: str  # what a user passes to YOLO(...) / model=...
    task: str  # "detect", "classify", "segment", "pose" or "obb"
    paper: str | None = None  # paper row, e.g. "Table 2 YOLOv11-PST-S"
    params_m: float | None = None  # paper #Param. (M)
    gflops: float | None = None  # paper FLOPs (G)
    asserted: bool = False  # params must be within TOLERANCE of params_m
    psts: int = 0  # PST layers in the model (0: 1 for classification, 2 for the dense tasks, the paper's layouts)

    @property
    def n_pst(self) -> int:
        """PST layers in the model (a C3k2PST holds one)."""
        return self.psts or (1 if self.task == "classify" else 2)

    @property
    def imgsz(self) -> int:
        """Input size the paper reports at (224 for classification, 640 for the dense tasks)."""
        return 224 if self.task == "classify" else 640


TASK_SUFFIXES = (("seg", "segment"), ("pose", "pose"), ("obb", "obb"))
MODELS = (
    ZooModel("yolo11n-pst.yaml", "detect", "Table 2 YOLOv11-PST-N", 2.8, 10.1),
    ZooModel("yolo11s-pst.yaml", "detect", "Table 2 YOLOv11-PST-S", 9.3, 21.0, True),
    ZooModel("yolo11m-pst.yaml", "detect", "Table 2 YOLOv11-PST-M", 19.5, 65.9, True),
    ZooModel("yolo11l-pst.yaml", "detect"),
    ZooModel("yolo11x-pst.yaml", "detect"),
    ZooModel("yolo12n-pst.yaml", "detect", "Table 2 YOLOv12-PST-N", 4.3, 15.8),
    ZooModel("yolo12s-pst.yaml", "detect"),
    ZooModel("yolo12m-pst.yaml", "detect"),
    ZooModel("r18-pst.yaml", "detect", "Table 1 R-18-PST-N", 16.4, 42.5, True),
    ZooModel("r50-pst.yaml", "detect", "Table 1 R-50-PST-N", 26.0, 71.9, True),
    ZooModel("r101-pst.yaml", "detect", "Table 1 R-101-PST-S", 49.9, 138.5, True),
    ZooModel("yolo11n-cls-pst.yaml", "classify", "Table 3 YOLOv11-cls-PST-N", 3.5, 4.9),
    ZooModel("yolo11s-cls-pst.yaml", "classify", "Table 3 YOLOv11-cls-PST-S", 11.5, 19.0, True),
    ZooModel("yolo11m-cls-pst.yaml", "classify"),
    ZooModel("yolo12n-cls-pst.yaml", "classify"),
    ZooModel("yolo12s-cls-pst.yaml", "classify"),
    ZooModel("yolo12m-cls-pst.yaml", "classify"),
    ZooModel("r18-cls-pst.yaml", "classify", "Table 3 R-18-PST-N", 19.6, 43.0, True),
    ZooModel("r50-cls-pst.yaml", "classify", "Table 3 R-50-PST-N", 29.2, 72.0, True),
    ZooModel("r101-cls-pst.yaml", "classify", "Table 3 R-101-PST-S", 54.4, 140.0, True),
    *(ZooModel(f"yolo{v}n-{suffix}-pst.yaml", task) for v in ("11", "12")
      for suffix, task in (("seg", "segment"), ("pose", "pose"), ("obb", "obb"))),
    # beyond the paper: the recommended residual-PST family (docs/accuracy.md) and YOLO26
    *(ZooModel(f"yolo11{s}-pst-res.yaml", "detect", psts=1) for s in "nsmlx"),
    *(ZooModel(f"yolo11n-{suffix}-pst-res.yaml", task, psts=1) for suffix, task in TASK_SUFFIXES),
    *(ZooModel(f"yolo26{s}-pst.yaml", "detect") for s in "nsmlx"),
    *(ZooModel(f"yolo26{s}-pst-res.yaml", "detect", psts=1) for s in "nsmlx"),
    *(ZooModel(f"yolo26n-{suffix}-pst{res}.yaml", task, psts=1 if res else 0) for suffix, task in TASK_SUFFIXES
      for res in ("", "-res")),
    *(ZooModel(f"yolo26{s}-cls-pst.yaml", "classify") for s in "nsm"),
)

# Stock Ultralytics baselines of the paper's tables, for context (paper figures as printed).
BASELINES = (
    ZooModel("yolo11n.yaml", "detect", "Table 2 YOLOv11-N", 2.6, 6.5),
    ZooModel("yolo11s.yaml", "detect", "Table 2 YOLOv11-S", 9.4, 21.5),
    ZooModel("yolo11m.yaml", "detect", "Table 2 YOLOv11-M", 20.1, 68.0),
    ZooModel("yolo12n.yaml", "detect", "Table 2 YOLOv12-N", 2.6, 6.5),
    ZooModel("yolo11n-cls.yaml", "classify", "Table 3 YOLOv11-cls-N", 1.6, 5.3),
    ZooModel("yolo11s-cls.yaml", "classify", "Table 3 YOLOv11-cls-S", 5.5, 16.0),
    ZooModel("yolo11n-seg.yaml", "segment"),
    ZooModel("yolo11n-pose.yaml", "pose"),
    ZooModel("yolo11n-obb.yaml", "obb"),
    ZooModel("yolo26n.yaml", "detect"),
    ZooModel("yolo26n-cls.yaml", "classify"),
)

# The recommended PST model per (family, task): the best one measured against stock on the three data sets of the
# accuracy study (docs/accuracy.md). "{s}" is the scale letter. YOLO12 has no measured alternative to the paper's
# layout, so it answers that.
RECOMMENDED = {
    ("yolo11", "detect"): "yolo11{s}-pst-res.yaml",
    ("yolo11", "segment"): "yolo11{s}-seg-pst-res.yaml",
    ("yolo11", "pose"): "yolo11{s}-pose-pst-res.yaml",
    ("yolo11", "obb"): "yolo11{s}-obb-pst-res.yaml",
    ("yolo11", "classify"): "yolo11{s}-cls-pst.yaml",
    ("yolo12", "detect"): "yolo12{s}-pst.yaml",
    ("yolo12", "segment"): "yolo12{s}-seg-pst.yaml",
    ("yolo12", "pose"): "yolo12{s}-pose-pst.yaml",
    ("yolo12", "obb"): "yolo12{s}-obb-pst.yaml",
    ("yolo12", "classify"): "yolo12{s}-cls-pst.yaml",
    ("yolo26", "detect"): "yolo26{s}-pst-res.yaml",
    ("yolo26", "segment"): "yolo26{s}-seg-pst-res.yaml",
    ("yolo26", "pose"): "yolo26{s}-pose-pst-res.yaml",
    ("yolo26", "obb"): "yolo26{s}-obb-pst-res.yaml",
    ("yolo26", "classify"): "yolo26{s}-cls-pst.yaml",
}


def recommended(task: str = "detect", scale: str = "n", family: str = "yolo11") -> str:
    """The YAML name to train for a PST model of ``family`` (yolo11, yolo12, yolo26), ``task`` and ``scale``.

    Examples:
        >>> recommended()
        'yolo11n-pst-res.yaml'
        >>> recommended("segment", "s", family="yolo26")
        'yolo26s-seg-pst-res.yaml'
    """
    import yaml

    from pst_yolo.integration import find_cfg

    families = sorted({f for f, _ in RECOMMENDED})
    tasks = sorted({t for _, t in RECOMMENDED})
    if family not in families:
        raise ValueError(f"pst-yolo: recommended(): family must be one of {families}, got {family!r}")
    if task not in tasks:
        raise ValueError(f"pst-yolo: recommended(): task must be one of {tasks}, got {task!r}")
    template = RECOMMENDED[(family, task)]
    scales = sorted(yaml.safe_load(find_cfg(template.replace("{s}", "")).read_text())["scales"])  # the file's own
    if scale not in scales:
        raise ValueError(f"pst-yolo: recommended(): scale must be one of {scales} for {family} {task}, got {scale!r}")
    return template.format(s=scale)
