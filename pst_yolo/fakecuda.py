"""The CUDA path of a PST model, checked on a machine without a GPU: the real model on fake CUDA tensors.

``torch._subclasses.fake_tensor.FakeTensorMode`` runs a model on tensors that carry a device, a dtype and a shape but no
data, and accepts ``device="cuda"`` where there is no GPU. :func:`check` puts a real model (built from its YAML, every
parameter, buffer and tensor attribute converted one by one) on fake CUDA tensors and runs an eval forward, or a
training forward with the task's Ultralytics loss under AMP, with an :class:`Inspector` that sees every ATen op:

- devices: an op inside a PST layer that takes (or creates) a non-scalar CPU tensor while the model is on CUDA;
- dtypes: the input dtypes every kernel of a PST layer saw, and attention kernels fed inputs of mixed dtypes or, for
  the half-precision-only ones (FlashAttention's, SageAttention's), float32;
- host synchronisations: ``.item()``-like reads (``aten._local_scalar_dense``) and ops with data-dependent output
  shapes inside PST layers, which stall a GPU stream and rule out CUDA-graph capture; the same outside PST layers
  (Ultralytics' Detect reads its strides, its loss counts targets) are named and counted apart, not hidden;
- host-to-device copies inside PST layers (also outside CUDA-graph capture rules);
- branches: which functions of ``pst_yolo.scoring`` / ``attention`` / ``selection`` / ``fine`` ran and what
  ``choose_kernel`` and ``resolve_strategy`` returned.

Data-dependent values (a sync's value, a data-dependent output shape) cannot come from fake tensors: they are replayed
from a real run of the same model and batch on the CPU, so Ultralytics' own data-dependent code (the stride read, the
loss's target bookkeeping) runs unchanged. What fake tensors cannot check is listed in docs/performance.md ("The CUDA
path without a GPU"): numerics, speed, memory, and the backward pass (torch's autograd engine asks for a CUDA context;
:func:`check` calls the backward kernels of the PST attention ops directly instead).

Examples:
    >>> from pst_yolo.fakecuda import check
    >>> [report] = check("yolo11n-pst.yaml", modes=("autocast-fp16",), k=8, batch=2, imgsz=(640, 640))
    >>> report.problems, report.pst_syncs, report.stock_syncs
    ([], 0, {'model.23 (Detect)': 3})
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

MODES = ("float32", "float16", "autocast-fp16", "autocast-bf16")
# Modules whose functions are reported as branches taken.
BRANCH_MODULES = ("pst_yolo.scoring", "pst_yolo.attention", "pst_yolo.selection", "pst_yolo.fine")
# Attention kernels whose inputs must share a dtype; the first three also need half precision on CUDA.
HALF_ONLY = ("aten._scaled_dot_product_flash_attention.", "aten._flash_attention_forward.")
ATTENTION = HALF_ONLY + ("aten._scaled_dot_product_efficient_attention.", "aten._efficient_attention_forward.",
                         "aten._scaled_dot_product_cudnn_attention.", "aten.scaled_dot_product_attention.")
HALF = (torch.float16, torch.bfloat16)
SYNC_OPS = ("aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default", "aten.equal.default")


def _fake(t: torch.Tensor, mode, dtype=None) -> torch.Tensor:
    """A fake CUDA tensor of ``t``'s shape, strides and dtype (``dtype`` for a floating one): allocated in the mode, as
    the values do not matter (faster than converting ``t``)."""
    dtype = t.dtype if dtype is None or not t.is_floating_point() else dtype
    with mode:
        return torch.empty_strided(t.shape, t.stride(), dtype=dtype, device="cuda")


def to_fake_cuda(model: torch.nn.Module, mode, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Every parameter, buffer and tensor attribute (Ultralytics keeps ``stride`` as one) of ``model`` as a fake CUDA
    tensor of ``mode``, in place; floating ones cast to ``dtype`` if given. Converted outside the mode, one by one: a
    model cannot be built, nor ``.to("cuda")``-ed, inside it."""
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = torch.nn.Parameter(_fake(p, mode, dtype), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = _fake(b, mode, dtype if name not in ("num_batches_tracked",) else None)
        for name, v in list(vars(m).items()):
            if isinstance(v, torch.Tensor) and not name.startswith("_"):
                setattr(m, name, _fake(v, mode))
    return model


def _fake_state(obj, mode, seen: set) -> None:
    """The tensors, devices and modules held by a plain object (an Ultralytics loss and its assigner) moved to fake
    CUDA in place, so a criterion built on the CPU runs on the fake device without being built again."""
    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        to_fake_cuda(obj, mode)
        return
    for name, v in list(vars(obj).items()):
        if isinstance(v, torch.Tensor):
            setattr(obj, name, _fake(v, mode))
        elif isinstance(v, torch.device):
            setattr(obj, name, torch.device("cuda", 0))
        elif type(v).__module__.startswith(("ultralytics", "torch.nn")):
            _fake_state(v, mode, seen)


def _op(func) -> str:
    return f"aten.{func.__name__}" if getattr(func, "namespace", "aten") == "aten" else str(func)


@dataclass
class Report:
    """What one fake-CUDA run saw; ``problems`` is empty for a device-clean CUDA path."""

    model: str
    setting: str
    output: list = field(default_factory=list)  # (shape, dtype, device) of every output tensor
    problems: list = field(default_factory=list)
    pst_syncs: int = 0
    stock_syncs: dict = field(default_factory=dict)  # module -> count
    kernels: dict = field(default_factory=dict)  # op -> sorted input dtype tuples seen inside PST layers
    branches: list = field(default_factory=list)  # "module.function" (-> returned value) in first-call order
    ops: int = 0
    backward: str = ""  # training: whether the backward ran (it needs a CUDA context: only on a machine with a GPU)

    def summary(self) -> str:
        state = "clean" if not self.problems else f"{len(self.problems)} problem(s): " + "; ".join(self.problems[:3])
        stock = ", ".join(f"{k} x{v}" for k, v in self.stock_syncs.items()) or "none"
        return (f"{self.model} [{self.setting}]: {state}; {self.ops} ops, host syncs in PST layers {self.pst_syncs}, "
                f"outside (stock) {stock}")


def _data_dependent(func, args) -> bool:
    """A host read (``.item()``, ``bool()``) or an op whose output shape depends on the data (``nonzero``, ``unique``,
    indexing with a boolean mask; indexing with integer tensors is not)."""
    if str(func) in SYNC_OPS:
        return True
    if torch.Tag.dynamic_output_shape not in func.tags:
        return False
    if func.__name__.startswith("index"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    return True


class Inspector(TorchDispatchMode):
    """Sees every ATen op of a forward: devices, dtypes, syncs, attributed to the layer that ran it.

    Args:
        layers (dict): module -> name, for the layers ops are attributed to; PST layers are those in ``pst``.
        pst (set): The PST layers (by module).
        replay (list | None): Values of the data-dependent ops, in order, from :class:`Recorder` (fake runs); None
            records them instead (a real run).
    """

    def __init__(self, layers: dict, pst: set, replay: list | None = None):
        super().__init__()
        self.layers, self.pst, self.replay, self.recorded = layers, pst, replay, []
        self.pst_names = {layers[m] for m in pst}
        self.stack, self.report = [], Report("", "")
        self._hooks = []

    def __enter__(self):
        for module, name in self.layers.items():
            self._hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: self.stack.append(n)))
            self._hooks.append(module.register_forward_hook(lambda m, a, o: self.stack.pop() and None))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def where(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def in_pst(self) -> bool:
        return bool(self.stack) and self.stack[-1] in self.pst_names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        data_dependent = _data_dependent(func, args)
        inside = self.in_pst()
        if not (data_dependent or (inside and self.replay is not None)):  # nothing to see: the fast path
            self.report.ops += 1
            return func(*args, **kwargs)
        name, where = _op(func), self.where()
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if data_dependent:
            if inside:
                self.report.pst_syncs += 1
                self.report.problems.append(f"{where}: host sync {name} (a data-dependent read inside a PST layer)")
            else:
                key = where or "outside any layer"
                self.report.stock_syncs[key] = self.report.stock_syncs.get(key, 0) + 1
            if self.replay is not None:
                return self._replayed(func, name, tensors)
        out = func(*args, **kwargs)
        if data_dependent and self.replay is None:
            self.recorded.append((name, tree_map(lambda t: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor)
                                                 else t, out)))
        if self.replay is not None and inside:
            self._inspect(name, tensors, out)
        self.report.ops += 1
        return out

    def _replayed(self, func, name, tensors):
        if self.in_pst() and name.startswith("aten._local_scalar_dense") and (not self.replay or
                                                                             self.replay[0][0] != name):
            self.report.ops += 1  # a read the reference run could not make (already reported): go on with 0
            return 0
        if not self.replay:
            raise RuntimeError(f"pst-yolo fakecuda: {name} in {self.where()} has no recorded value (the CPU reference "
                               "run took another path)")
        was, value = self.replay.pop(0)
        if was != name:
            raise RuntimeError(f"pst-yolo fakecuda: replay out of step at {name} in {self.where()} (recorded {was})")
        device = tensors[0].device if tensors else torch.device("cuda")
        self.report.ops += 1
        return tree_map(lambda v: torch.empty(v[0], dtype=v[1], device=device)
                        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], torch.dtype) else v, value,
                        is_leaf=lambda v: isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], torch.dtype))

    def _inspect(self, name, tensors, out):
        where = self.where()
        cpu = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        made = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0]
        if cpu or made:
            what = "takes" if cpu else "creates"
            shape = tuple((cpu or made)[0].shape)
            self.report.problems.append(f"{where}: {name} {what} a CPU tensor {shape} in a CUDA forward")
        if name.startswith("aten._to_copy") and tensors and tensors[0].device.type == "cpu" and tensors[0].dim() > 0:
            self.report.problems.append(f"{where}: {name} copies a host tensor to the device (not capturable)")
        floats = tuple(str(t.dtype).replace("torch.", "") for t in tensors if t.is_floating_point())
        if floats:
            self.report.kernels.setdefault(name, set()).add(floats)
        if name.startswith(ATTENTION) and len(set(floats[:3])) > 1:
            self.report.problems.append(f"{where}: {name} gets q/k/v of mixed dtypes {floats[:3]}")
        if name.startswith(HALF_ONLY) and floats and floats[0] == "float32":
            self.report.problems.append(f"{where}: {name} is a half-precision kernel but gets float32 inputs")


class BranchTrace:
    """The functions of ``BRANCH_MODULES`` that ran (``sys.setprofile``), with the kernel and score strategy chosen."""

    CHOICES = ("choose_kernel", "resolve_strategy")

    def __init__(self):
        self.calls = []

    def _profile(self, frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if module not in BRANCH_MODULES:
            return
        if frame.f_code.co_name.startswith("<"):  # comprehensions and lambdas: not branches
            return
        name = f"{module.split('.')[-1]}.{frame.f_code.co_name}"
        if event == "call" and frame.f_code.co_name not in self.CHOICES:
            entry = name
        elif event == "return" and frame.f_code.co_name in self.CHOICES:
            entry = f"{name} -> {arg!r}"
        else:
            return
        if entry not in self.calls:
            self.calls.append(entry)

    def __enter__(self):
        self._old = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._old)


@contextlib.contextmanager
def uniform_tolist():
    """``Tensor.tolist()`` through ``.item()`` per element: on a real CPU tensor it reads memory directly, on a fake
    one it dispatches a host read, so without this the reference run and the fake run would see different syncs
    (Ultralytics' losses call it on counts that size later tensors)."""
    original = torch.Tensor.tolist

    def tolist(t):
        return t.item() if t.dim() == 0 else [tolist(x) for x in t.unbind(0)]

    torch.Tensor.tolist = tolist
    try:
        yield
    finally:
        torch.Tensor.tolist = original


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype):
    """``torch.autocast("cuda", dtype)`` that also works without a GPU: ``torch.autocast`` switches itself off (with a
    warning) when CUDA is unavailable, so a fake-CUDA forward would silently run in float32."""
    enabled, old = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", old)


def _flash_stand_in(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False, **_):
    """flash_attn.flash_attn_func's stated rules, checked on fake tensors: CUDA, fp16/bf16, (B, N, heads, d) with a
    contiguous last dim, head dim a multiple of 8 and <= 256, q/k/v of one dtype; returns tensors of its shapes."""
    rules = [(all(t.is_cuda for t in (q, k, v)), "needs CUDA tensors"),
             (q.dtype in HALF and q.dtype == k.dtype == v.dtype, "needs one fp16/bf16 dtype"),
             (q.dim() == 4 and all(t.stride(-1) == 1 for t in (q, k, v)), "needs (B, N, heads, d), contiguous d"),
             (q.shape[-1] % 8 == 0 and q.shape[-1] <= 256, "needs a head dim that is a multiple of 8 and <= 256")]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"flash_attn_func {why}: got {tuple(q.shape)} {q.dtype} on {q.device}")
    out = torch.empty_like(q)
    if return_attn_probs:  # (out, softmax_lse (B, heads, N) float32, S_dmask)
        return out, torch.empty(q.shape[0], q.shape[2], q.shape[1], device=q.device, dtype=torch.float32), None
    return out


def _sage_stand_in(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, **_):
    """sageattention.sageattn's rules (1.0.6), checked on fake tensors: CUDA, fp16/bf16, layout HND (B, heads, N, d),
    head dim 64, 96 or 128, and (executed under Triton's interpreter, pst_yolo.kernel_check) a key count that is a
    multiple of 64, the only one it computes exactly."""
    rules = [(all(t.is_cuda for t in (q, k, v)), "needs CUDA tensors"),
             (q.dtype in HALF and q.dtype == k.dtype == v.dtype, "needs one fp16/bf16 dtype"),
             (tensor_layout == "HND" and q.dim() == 4, "needs the HND layout (B, heads, N, d)"),
             (q.shape[-1] in (64, 96, 128), "needs a head dim of 64, 96 or 128"),
             (k.shape[-2] % 64 == 0, "is exact only for a key count that is a multiple of 64")]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"sageattn {why}: got {tuple(q.shape)} {q.dtype} on {q.device}")
    return torch.empty_like(q)


@contextlib.contextmanager
def libraries_missing():
    """FlashAttention and SageAttention not installed (``pst_yolo.extras.load_symbol``'s cache), whatever this machine
    has: the path of a plain ``pip install pst-yolo``."""
    with _imports({("flash_attn", "flash_attn_func"): (None, "package 'flash_attn' not installed (fake-CUDA check)"),
                   ("sageattention", "sageattn"): (None, "package 'sageattention' not installed (fake-CUDA check)")}):
        yield


@contextlib.contextmanager
def _imports(entries: dict):
    from pst_yolo import extras

    old = {k: extras._IMPORTS.get(k) for k in entries}
    extras._IMPORTS.update(entries)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                extras._IMPORTS.pop(k, None)
            else:
                extras._IMPORTS[k] = v


@contextlib.contextmanager
def library_stand_ins():
    """FlashAttention and SageAttention as fake-aware stand-ins (``pst_yolo.extras.load_symbol``'s cache): their entry
    points run up to the kernel call, which needs real hardware; the stand-ins check what those libraries state."""
    with _imports({("flash_attn", "flash_attn_func"): (_flash_stand_in, None),
                   ("sageattention", "sageattn"): (_sage_stand_in, None)}):
        yield


def synthetic_batch(task: str, batch: int, imgsz: tuple, nc: int = 3, kpt_shape=(4, 3), seed: int = 0) -> dict:
    """A training batch of ``task`` in the form Ultralytics' losses read: two objects per image (one image of a batch
    of two has three), boxes inside the image, masks / keypoints / angles as the task needs."""
    g = torch.Generator().manual_seed(seed)
    h, w = imgsz
    batch_dict = {"img": torch.rand(batch, 3, h, w, generator=g)}
    if task == "classify":
        batch_dict["cls"] = torch.randint(0, nc, (batch,), generator=g)
        return batch_dict
    counts = [2 + (i == 1) for i in range(batch)]
    n = sum(counts)
    xy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
    batch_dict.update(batch_idx=torch.cat([torch.full((c,), float(i)) for i, c in enumerate(counts)]),
                      cls=torch.randint(0, nc, (n, 1), generator=g).float(), bboxes=torch.cat([xy, wh], 1))
    if task == "obb":
        batch_dict["bboxes"] = torch.cat([xy, wh, torch.rand(n, 1, generator=g) * 1.5], 1)
    if task == "segment":  # overlapping instance masks at 1/4 size (instance number per pixel), semantic classes
        masks, sem = torch.zeros(batch, h // 4, w // 4), torch.zeros(batch, h // 4, w // 4)
        images = batch_dict["batch_idx"].long().tolist()
        for j, (i, box, c) in enumerate(zip(images, batch_dict["bboxes"], batch_dict["cls"][:, 0])):
            x0, y0 = int((box[0] - box[2] / 2) * w / 4), int((box[1] - box[3] / 2) * h / 4)
            x1, y1 = int((box[0] + box[2] / 2) * w / 4), int((box[1] + box[3] / 2) * h / 4)
            masks[i, y0:y1, x0:x1] = images[: j + 1].count(i)
            sem[i, y0:y1, x0:x1] = c
        batch_dict.update(masks=masks, sem_masks=sem)
    if task == "pose":
        kpts = torch.rand(n, *kpt_shape, generator=g)
        kpts[..., :2] = xy[:, None] + (kpts[..., :2] - 0.5) * wh[:, None]
        kpts[..., 2:] = 1.0
        batch_dict["keypoints"] = kpts
    return batch_dict


def build(model) -> torch.nn.Module:
    """A real CPU model in float32: a Ultralytics model from a YAML name or checkpoint path, or an ``nn.Module``."""
    if isinstance(model, torch.nn.Module):
        return model.float()
    from ultralytics import YOLO

    return YOLO(str(model)).model.float()


def _on_meta(net):
    """A copy of ``net`` on the meta device, with the tensors kept as plain attributes (Ultralytics' ``stride``, which
    its ``_apply`` moves too) real: what a head reads from them is a real value to record."""
    import copy

    meta = copy.deepcopy(net).to("meta")
    for m_meta, m in zip(meta.modules(), net.modules()):
        for name, v in vars(m).items():
            if isinstance(v, torch.Tensor) and not name.startswith("_"):
                setattr(m_meta, name, v)
    return meta


def _layers(net) -> tuple[dict, set]:
    from pst_yolo.training import pst_attention

    seq = getattr(net, "model", None)
    children = list(seq) if isinstance(seq, torch.nn.Sequential) else [net]
    layers = {m: f"model.{i} ({type(m).__name__})" for i, m in enumerate(children)}
    return layers, {m for m in children if pst_attention(m)}


def _forward(net, x, batch, train: bool):
    if not train:
        return net(x)
    loss, items = net.loss({**batch, "img": x})
    return loss


def _backward(loss) -> str:
    """The backward of a fake-CUDA loss where torch can run it: its autograd engine asks for a CUDA context
    (``GraphTask::stash_current_streams``) for any CUDA tensor, fake or not, so only on a machine with a GPU."""
    if not torch.cuda.is_available():
        return "not run: the autograd engine needs a CUDA context"
    loss.sum().backward()
    return "ran"


def _described(out) -> list:
    return [(tuple(t.shape), str(t.dtype).replace("torch.", ""), t.device.type) for t in tree_leaves(out)
            if isinstance(t, torch.Tensor)]


def check(model, modes=("float32",), k: int = 8, batch: int = 2, imgsz=(640, 640), train: bool = False,
          strategy: str | None = None, backend: str | None = None, libraries: bool = False, branches: bool = False,
          net: torch.nn.Module | None = None) -> list:
    """Run ``model`` on fake CUDA tensors, once per dtype mode, and report what the CUDA path does (module docstring).

    Args:
        model (str | nn.Module): A model YAML name or checkpoint, or a module.
        modes (tuple): Dtype modes (``MODES``): ``"float32"``, ``"float16"`` (``model.half()``, as ``yolo val
            half=True``), ``"autocast-fp16"`` / ``"autocast-bf16"`` (float32 weights under CUDA autocast, as the
            trainer's AMP and its validator). One CPU reference run serves them all.
        k (int): Fine-attention regions per head (0: coarse only).
        batch (int): Images per batch.
        imgsz (tuple): (H, W) of the input.
        train (bool): A training forward with the task's Ultralytics loss instead of an eval forward.
        strategy (str | None): Score strategy (``pst_yolo.scoring``); None: auto (``lse`` on CUDA).
        backend (str | None): Attention kernel (``pst_yolo.attention``); None: auto.
        libraries (bool): FlashAttention and SageAttention "installed" as fake-aware stand-ins
            (:func:`library_stand_ins`); False: as after ``pip install pst-yolo``, without them.
        branches (bool): Record the branches taken (:class:`BranchTrace`; a profile hook, several times slower).
        net (nn.Module | None): The built model (float32, CPU), used instead of building ``model``; left unchanged.

    Returns:
        (list[Report]): One per mode; ``problems`` empty when the CUDA path is device-clean.
    """
    import copy

    from pst_yolo import attention, scoring
    from pst_yolo.runtime import set_topk

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"pst-yolo fakecuda: modes must be among {MODES}, got {bad}")
    net = copy.deepcopy(net) if net is not None else build(model)
    name = model if isinstance(model, str) else type(model).__name__
    set_topk(net, k)
    net.train(train)
    task = getattr(net, "task", None) or ("classify" if "Classif" in type(net).__name__ else "detect")
    data = None
    if train:
        from ultralytics.cfg import get_cfg

        net.args = get_cfg()
        net.criterion = net.init_criterion()  # before the reference run: building it reads the strides
        kpt = tuple(getattr(net, "kpt_shape", None) or (4, 3))
        data = synthetic_batch(task, batch, imgsz, nc=getattr(net, "nc", 3), kpt_shape=kpt)
    # The reference run: a training step really runs on the CPU (its loss reads the labels); an eval forward runs on
    # the meta device (no data, no compute), the tensors Ultralytics keeps as attributes (the strides) staying real.
    reference = net if train else _on_meta(net)
    real = data["img"] if train else torch.empty(batch, 3, *imgsz, device="meta")
    old = scoring.get_strategy(), attention.get_backend()
    scoring.set_strategy(strategy)
    attention.set_backend(backend)
    try:
        recorder, want, failed = Inspector(*_layers(reference)), None, None  # data-dependent values, output shapes
        try:
            with recorder, torch.set_grad_enabled(train), uniform_tolist():
                want = _described(_forward(reference, real, data, train))
        except Exception as e:  # the model is broken off CUDA too: the fake run says where on CUDA
            failed = f"the reference run failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        reports, fakes = [], {}
        for mode in modes:
            setting = f"{mode}, k={k}, batch {batch}, {imgsz[0]}x{imgsz[1]}, {'train' if train else 'eval'}"
            weights = torch.float16 if mode == "float16" else torch.float32  # autocast runs on float32 weights
            if weights not in fakes:
                fakes[weights] = _fake_model(copy.deepcopy(net), weights, train)
            report = _fake_run(*fakes[weights], mode, batch, imgsz, data, train, recorder.recorded, libraries,
                               branches)
            report.model, report.setting = name, setting
            if failed and not report.problems:
                report.problems.append(failed)
            if want is not None and report.output and [o[0] for o in report.output] != [w[0] for w in want]:
                report.problems.append(f"output shapes {[o[0] for o in report.output]} differ from the CPU model's "
                                       f"{[w[0] for w in want]}")
            if any(o[2] != "cuda" for o in report.output):
                report.problems.append(f"outputs not all on CUDA: {report.output}")
            reports.append(report)
    finally:
        scoring.set_strategy(old[0] if old[0] != "auto" else None)
        attention.set_backend(old[1] if old[1] != attention.AUTO else None)
    return reports


def _fake_model(net, weights: torch.dtype, train: bool) -> tuple:
    """``(net, its fake mode)``: ``net`` converted to fake CUDA tensors with ``weights`` as its floating dtype."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_mode = FakeTensorMode()
    to_fake_cuda(net, fake_mode, weights)
    if train:  # the criterion built for the reference run, moved
        _fake_state(net.criterion, fake_mode, set())
    return net, fake_mode


def _fake_run(net, fake_mode, mode, batch, imgsz, data, train, recorded, libraries, trace_branches) -> Report:
    """One forward of the fake ``net`` in dtype ``mode``, replaying ``recorded``."""
    for m in net.modules():  # a head's cached anchors would hide its stride read (and the replay would be out of step)
        if hasattr(m, "anchors") and hasattr(m, "shape"):
            m.shape = None
    layers, pst = _layers(net)
    inspector = Inspector(layers, pst, replay=list(recorded))
    half = {"autocast-fp16": torch.float16, "autocast-bf16": torch.bfloat16}.get(mode)
    fake_data = None if data is None else {key: _fake(v, fake_mode) for key, v in data.items() if key != "img"}
    with fake_mode:
        x = torch.empty(batch, 3, *imgsz, device="cuda", dtype=torch.float16 if mode == "float16" else None)
    out = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(fake_mode)
        stack.enter_context(uniform_tolist())
        stack.enter_context(library_stand_ins() if libraries else libraries_missing())
        stack.enter_context(torch.set_grad_enabled(train))
        if half is not None:
            stack.enter_context(cuda_autocast(half))
        branches = stack.enter_context(BranchTrace()) if trace_branches else None
        stack.enter_context(inspector)
        try:
            out = _forward(net, x, fake_data, train)
            if train:
                inspector.report.backward = _backward(out)
        except Exception as e:  # a device / dtype / kernel-rule error: name the layer it happened in
            inspector.report.problems.append(f"{inspector.where() or 'model'}: {type(e).__name__}: "
                                             f"{str(e).splitlines()[0][:300]}")
    report = inspector.report
    report.branches = branches.calls if branches else []
    report.kernels = {op: sorted(v) for op, v in report.kernels.items()}
    report.output = _described(out) if out is not None else []
    return report


# The shipped PST models the check covers (pst_yolo.zoo.MODELS at the scales the issue lists: n and s for detection).
ZOO = tuple(f"yolo{v}{s}-pst.yaml" for v in ("11", "12", "26") for s in "ns") + \
    tuple(f"yolo{v}{s}-pst-res.yaml" for v in ("11", "26") for s in "ns") + \
    tuple(f"yolo{v}n-{t}-pst{r}.yaml" for v in ("11", "12", "26") for t in ("seg", "pose", "obb")
          for r in ("", "-res") if not (v == "12" and r)) + \
    tuple(f"yolo{v}n-cls-pst.yaml" for v in ("11", "12", "26")) + \
    tuple(f"r{d}{t}-pst.yaml" for d in ("18", "50", "101") for t in ("", "-cls"))
SIZES = ((640, 640), (352, 480))  # square, and non-square with odd P5 maps (11 x 15)


def plan(models=ZOO, full: bool = False) -> list:
    """The checks to run: every model in eval in all four dtype modes and in one AMP training step. The eval's k,
    batch and size rotate over the models, so every combination is covered across the zoo (a combination's PST code
    does not depend on the model's scale); ``full``: every combination for every model. ResNet models (tens of millions
    of parameters, a slow CPU reference run) take the smaller size."""
    combos = [(k, b, size) for k in (0, 8) for b in (1, 2) for size in SIZES]
    jobs = []
    for i, model in enumerate(models):
        for k, b, size in (combos if full else [combos[i % len(combos)]]):
            jobs.append(dict(model=model, modes=MODES, k=k, batch=b, imgsz=SIZES[1] if model.startswith("r") else size,
                             train=False))
        small = (224, 160) if "-cls" in model else (256, 192)
        jobs.append(dict(model=model, modes=("autocast-fp16",), k=0, batch=2, imgsz=small, train=True))
    return jobs


def run_plan(jobs, progress=None, workers: int = 1) -> list:
    """Run ``plan()``'s checks, each model built once; returns the reports (in plan order). ``workers`` > 1 splits the
    models over that many processes; ``progress(report)`` is called as reports arrive."""
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        models = list(dict.fromkeys(j["model"] for j in jobs))
        parts = [[j for j in jobs if j["model"] in models[i::workers]] for i in range(workers)]
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of a torch process
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            done = [pool.submit(run_plan, part) for part in parts if part]
            by_model = {}
            for future in concurrent.futures.as_completed(done):
                for report in future.result():
                    by_model.setdefault(report.model, []).append(report)
                    if progress is not None:
                        progress(report)
        return [r for m in models for r in by_model.get(m, [])]
    reports, built = [], {}
    for job in jobs:
        if job["model"] not in built:
            built = {job["model"]: build(job["model"])}  # one model in memory at a time
        for report in check(net=built[job["model"]], **job):
            reports.append(report)
            if progress is not None:
                progress(report)
    return reports


class PSTProbe(torch.nn.Module):
    """A PST layer alone behind a two-conv stem (image -> finer map x, coarser map u), for the branch matrix."""

    def __init__(self, c1=64, c_up=128, c2=64, **pst):
        super().__init__()
        from ultralytics.nn.modules.conv import Conv

        from pst_yolo.modules import PST

        self.model = torch.nn.Sequential(Conv(3, c1, 3, 1), Conv(c1, c_up, 3, 2), PST(c1, c_up, c2, **pst))

    def forward(self, img):
        x = self.model[0](img)
        return self.model[2]([x, self.model[1](x)])


STRATEGIES = ("auto", "lse", "chunked")
BACKENDS = ("auto", "sdpa", "reference", "flash", "sage")


def branch_matrix(modes=MODES, imgsz=(20, 16)) -> list:
    """What a PST layer runs on CUDA in every dtype mode for each score strategy (``auto`` is ``lse`` there, and
    ``chunked``) and attention kernel, with the optional libraries installed (as stand-ins) and not; at k=8 (scores,
    fine attention) and k=0 (the coarse output from the kernel itself). One report per setting, ``branches`` and
    ``kernels`` filled.

    Returns:
        (list[dict]): ``mode``, ``k``, ``strategy``, ``backend``, ``libraries``, ``fusion`` and the ``report``.
    """
    from pst_yolo.runtime import set_fusion

    torch.manual_seed(0)
    probe = PSTProbe().eval()
    settings = [(k, strategy, backend, libraries, "joint") for libraries in (False, True) for k in (8, 0)
                for strategy in (STRATEGIES[::2] if k else ("auto",))  # k=0 computes no scores
                for backend in (BACKENDS if not libraries else ("auto", "flash", "sage"))]
    settings = [(*s, imgsz) for s in settings]
    settings.append((8, "auto", "auto", False, "add", imgsz))  # the paper's additive fusion: one more pass
    # SageAttention serves only whole blocks of 64 keys (the default size has 10 x 8 = 80): 8 x 8 coarse keys
    settings.append((0, "auto", "sage", True, "joint", (16, 16)))
    rows = []
    for k, strategy, backend, libraries, fusion, size in settings:
        set_fusion(probe, fusion)
        reports = check(probe, modes=modes, k=k, batch=2, imgsz=size, strategy=strategy, libraries=libraries,
                        backend=None if backend == "auto" else backend, branches=True, net=probe)
        rows += [dict(mode=m, k=k, strategy=strategy, backend=backend, libraries=libraries, fusion=fusion, imgsz=size,
                      report=r) for m, r in zip(modes, reports)]
    return rows
