"""The optional GPU attention kernels executed, not traced: their numbers at every shape PST gives them.

``pst_yolo.fakecuda`` proves shapes, dtypes and host syncs on fake CUDA tensors; it cannot prove that a kernel computes
the right numbers. SageAttention 1.0.6 is pure Triton, and FlashAttention 2.8 has a Triton backend
(``FLASH_ATTENTION_TRITON_AMD_ENABLE=TRUE``): under Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is
imported) their ``@triton.jit`` kernels run on CPU tensors. This module calls the libraries' own entry points, unchanged,
through pst-yolo's adapters (``pst_yolo.attention``), at the coarse-pass shapes of every shipped detection layout, and
compares with a float64 reference:

- SageAttention's wrapper asserts ``q.is_cuda``; :class:`ReportsCuda` is a CPU tensor that says it is one, so what runs
  is the library's code path (smoothing, per-block int8 quantisation, its kernels), not a copy.
- FlashAttention's kernel is a ``torch.library`` custom op registered for CUDA only; :func:`serve_flash_on_cpu`
  registers the op's own function for CPU tensors too.

On a machine with a GPU the same checks run on real CUDA tensors (``device="cuda"``), no interpreter involved.

Tolerance (SageAttention): the error of an *exact* int8 kernel, :func:`int8_reference` (q and k quantised as the
library documents: k smoothed by its mean, symmetric int8 per block of 128 queries / 64 keys, round half away from zero;
softmax and PV in float64), plus fp16 rounding of the probabilities and of the PV accumulation: a kernel passes when its
mean absolute error against float64 is at most that exact-int8 error plus ``2**-9`` of the outputs' mean magnitude, and
its largest error at most the exact-int8 largest error plus ``2**-7`` of the values' largest magnitude. FlashAttention
(exact): ``2**-8`` relative in float16.

Run as ``python -m pst_yolo.kernel_check`` (it sets the interpreter itself where there is no GPU); the tests
(tests/test_kernels_executed.py) run it in a subprocess.
"""

from __future__ import annotations

import json
import os
import sys

import torch

INTERPRETER_ENV = {"TRITON_INTERPRET": "1", "FLASH_ATTENTION_TRITON_AMD_ENABLE": "TRUE"}
# The shipped detection layouts (every scale of a family fuses the same pyramid levels) and the sizes checked; the
# non-square size has odd P5 maps (15 x 11), as 160 px has (5 x 5).
LAYOUTS = ("yolo11n-pst.yaml", "yolo11n-pst-res.yaml", "yolo12n-pst.yaml", "yolo26n-pst.yaml", "yolo26n-pst-res.yaml",
           "r18-pst.yaml")
SIZES = ((128, 128), (160, 160), (320, 320), (640, 640), (1280, 1280), (480, 352))
HALF = (torch.float16, torch.bfloat16)
# SageAttention 1.0.6's blocks (sageattention/quant_per_block.py, attn_qk_int8_per_block.py)
SAGE_Q_BLOCK, SAGE_K_BLOCK = 128, 64


class ReportsCuda(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` is True: the libraries' wrappers (and pst-yolo's adapters, which route on it) take
    it as a CUDA tensor, and Triton's interpreter runs their kernels on its CPU memory. Ops on it return it (torch's
    default subclass propagation), so the padding and copies the adapters make stay "CUDA" too."""

    @property
    def is_cuda(self):
        return True


def as_cuda(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a real CUDA tensor where a GPU is present, else as a :class:`ReportsCuda` CPU tensor."""
    return t.cuda() if torch.cuda.is_available() else t.as_subclass(ReportsCuda)


_FLASH_ON_CPU = []


def serve_flash_on_cpu() -> None:
    """Register FlashAttention's forward op (``flash_attn::_flash_attn_forward``, a custom op for CUDA tensors) for CPU
    tensors with the op's own function, so ``flash_attn_func`` runs its Triton kernel under the interpreter. Idempotent."""
    if _FLASH_ON_CPU:
        return
    from flash_attn import flash_attn_interface as fai

    torch.library.register_kernel("flash_attn::_flash_attn_forward", "cpu", fai._flash_attn_forward._init_fn)
    _FLASH_ON_CPU.append(True)


class _HeadReached(Exception):
    pass


def psa_strides(model: str, probe: int = 640) -> list:
    """(heads, stride of the finer map, head dim) of every PSA of ``model``, read off a forward at ``probe`` px on fake
    tensors (no compute)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from ultralytics import YOLO

    from pst_yolo.training import pst_attention

    net = YOLO(model).model.eval()
    found = []

    def head(m, args):  # the head reads values (its strides), which fake tensors do not have: stop before it
        raise _HeadReached

    hooks = [m.register_forward_pre_hook(lambda m, args: found.append((m.heads, probe // int(args[0].shape[2]),
                                                                      m.head_dim))) for m in pst_attention(net)]
    hooks.append(net.model[-1].register_forward_pre_hook(head))
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            net(mode.from_tensor(torch.zeros(1, 3, probe, probe)))
    except _HeadReached:
        pass
    finally:
        for h in hooks:
            h.remove()
    return found


def coarse_shape(stride: int, imgsz: tuple) -> tuple:
    """(N, M) of a PSA whose finer map has ``stride`` at input ``imgsz`` (h, w): Ultralytics' stride-2 convs give
    ceil(h / 2), so the coarser map is ceil of the finer one's half."""
    h, w = -(-imgsz[0] // stride), -(-imgsz[1] // stride)
    return h * w, -(-h // 2) * -(-w // 2)


def all_shapes(layouts=LAYOUTS, sizes=SIZES) -> list:
    """The distinct coarse-pass shapes (heads, N, M, d) of ``layouts`` at ``sizes``, with where each first comes from
    (heads: the most any layout of the list has at that shape)."""
    seen = {}
    for model in layouts:
        for heads, stride, d in psa_strides(model):
            for size in sizes:
                key = (*coarse_shape(stride, size), d)
                if key not in seen or seen[key][0] < heads:
                    seen[key] = (heads, f"{model} {size[0]}x{size[1]} (stride {stride})")
    return [dict(heads=h, n=n, m=m, d=d, source=src) for (n, m, d), (h, src) in sorted(seen.items())]


def _quantise(x: torch.Tensor, block: int) -> torch.Tensor:
    """Symmetric int8 per block of ``block`` rows (dim -2), round half away from zero, dequantised (float64)."""
    n = x.shape[-2]
    out = torch.empty_like(x)
    for i in range(0, n, block):
        part = x[..., i : i + block, :]
        scale = part.abs().amax(dim=(-2, -1), keepdim=True) / 127.0
        q = torch.where(scale > 0, part / scale.clamp_min(1e-300), 0.0)
        out[..., i : i + block, :] = torch.trunc(q + 0.5 * torch.sign(q)) * scale
    return out


def int8_reference(q, k, v, scale: float) -> torch.Tensor:
    """What an exact SageAttention 1.0.6 computes: k minus its mean over the keys, q * scale and k quantised to int8 per
    block (``SAGE_Q_BLOCK`` / ``SAGE_K_BLOCK`` rows), softmax and PV in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    k = k - k.mean(dim=-2, keepdim=True)
    logits = _quantise(q * scale, SAGE_Q_BLOCK) @ _quantise(k, SAGE_K_BLOCK).transpose(-2, -1)
    return logits.softmax(dim=-1) @ v


def checked_queries(n: int) -> int:
    """Queries checked of ``n``: every query block of the kernels is an independent program over all the keys, so two
    full blocks and the real count's partial one (the same ``n % 128``) exercise what ``n`` does, in interpreter time
    that does not grow with the image."""
    return min(n, 2 * SAGE_Q_BLOCK + n % SAGE_Q_BLOCK)


def _inputs(b, heads, n, m, d, dtype, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, heads, s, d, generator=g) * spread).to(dtype) for s in (n, m, m)]


def _errors(out, ref):
    diff = (out.double().cpu() - ref).abs()
    return float(diff.mean()), float(diff.max())


def check_case(kernel: str, shape: dict, dtype, seed: int = 0, direct: bool = False, spread: float = 1.0,
               same_keys: bool = False) -> dict:
    """One call of ``kernel`` at ``shape`` (an :func:`all_shapes` row) in ``dtype``, against float64.

    ``direct``: the library's kernel through pst-yolo's adapter function itself (``sage_attention``, or
    ``flash_attention_lse``, whose log-sum-exp the ``lse`` scores use, checked too), whatever ``pst_yolo.attention``
    would route; else through :func:`pst_yolo.attention.attention` with ``backend=kernel``, as a PST layer calls it (the
    row says which kernel served). ``same_keys``: every key equal (a flat image region), which the key smoothing turns
    into zeros and a zero quantisation scale.
    """
    from pst_yolo import attention as A

    q, k, v = _inputs(1, shape["heads"], checked_queries(shape["n"]), shape["m"], shape["d"], dtype, seed, spread)
    if same_keys:
        k = k[..., :1, :].expand_as(k).contiguous()
    scale = shape["d"] ** -0.5
    ref = A.reference_attention(q.double(), k.double(), v.double(), scale=scale)
    cq, ck, cv = (as_cuda(t) for t in (q, k, v))
    lse = None
    with torch.no_grad():
        if direct and kernel == "flash":
            served, (out, lse) = kernel, A.flash_attention_lse(cq, ck, cv, scale=scale)
        elif direct:
            served, out = kernel, A.KERNELS[kernel].fn(cq, ck, cv, None, scale)
        else:
            served = A.choose_kernel(cq, ck, cv, None, kernel)
            out = A.attention(cq, ck, cv, scale=scale, backend=kernel)
    out = out.as_subclass(torch.Tensor).cpu()
    mean_err, max_err = _errors(out, ref)
    row = dict(kernel=kernel, direct=direct, served=served, dtype=str(dtype).replace("torch.", ""), seed=seed,
               spread=spread, same_keys=same_keys, n_checked=q.shape[-2], mean_err=mean_err, max_err=max_err,
               ref_mean=float(ref.abs().mean()), finite=bool(torch.isfinite(out.double()).all()), **shape)
    if kernel == "sage":
        sim_mean, sim_max = _errors(int8_reference(q, k, v, scale), ref)
        row.update(int8_mean_err=sim_mean, int8_max_err=sim_max,
                   tol_mean=sim_mean + 2**-8 * row["ref_mean"], tol_max=sim_max + 2**-7 * float(v.abs().max()))
    else:
        row.update(tol_mean=2**-8 * row["ref_mean"], tol_max=2**-6 * float(v.abs().max()))
    row["ok"] = row["finite"] and row["mean_err"] <= row["tol_mean"] and row["max_err"] <= row["tol_max"]
    if lse is not None:
        ref_lse = ((q.double() * scale) @ k.double().transpose(-2, -1)).logsumexp(dim=-1)
        row["lse_max_err"] = float((lse.as_subclass(torch.Tensor).cpu().double() - ref_lse).abs().max())
        row["lse_shape_ok"] = tuple(lse.shape) == tuple(ref_lse.shape) and lse.dtype == torch.float32
        row["ok"] = row["ok"] and row["lse_shape_ok"] and row["lse_max_err"] <= 2**-8 * (1 + float(ref_lse.abs().max()))
    return row


def kernel_dtypes(kernel: str, dtypes) -> tuple:
    """The dtypes ``kernel`` is checked in here: FlashAttention's Triton backend computes garbage in bfloat16 under the
    interpreter (relative error ~1e9 with no pst-yolo code involved), so on a CPU it is checked in float16 only."""
    if kernel == "flash" and not torch.cuda.is_available():
        return tuple(d for d in dtypes if d != torch.bfloat16)
    return tuple(dtypes)


def available(kernel: str) -> str | None:
    """Why ``kernel``'s library cannot run here (None if it can)."""
    from pst_yolo import attention as A

    why = A.KERNELS[kernel].available()
    if why is None and kernel == "flash" and not torch.cuda.is_available():
        try:
            serve_flash_on_cpu()
        except Exception as e:  # noqa: BLE001 - any failure to register is a reason to report, not to crash on
            return f"flash_attn's forward op cannot be served on CPU ({type(e).__name__}: {e})"
    return why


def run(kernels=("sage", "flash"), layouts=LAYOUTS, sizes=SIZES, dtypes=(torch.float16, torch.bfloat16),
        head_dims=(32, 64), progress=None) -> dict:
    """Every check of this module: per kernel, the library directly and pst-yolo's backend at every coarse shape (head
    dims ``head_dims``: PST's 32, and 64, which the adapter pads 32 to), in each half dtype; plus keys that are all equal
    (a flat image). Returns ``shapes``, ``rows`` and, per kernel, why it did not run (``missing``)."""
    shapes = all_shapes(layouts, sizes)
    cases = [dict(s, d=d) for s in shapes for d in head_dims]
    rows, missing = [], {}
    for kernel in kernels:
        why = available(kernel)
        if why is not None:
            missing[kernel] = why
            continue
        for dtype in kernel_dtypes(kernel, dtypes):
            for shape in cases:
                for direct in (True, False):
                    rows.append(check_case(kernel, shape, dtype, direct=direct))
                    if progress:
                        progress(rows[-1])
            for shape in (cases[0], cases[-1]) if cases else ():
                rows.append(check_case(kernel, shape, dtype, same_keys=True))
                if progress:
                    progress(rows[-1])
    return dict(shapes=shapes, rows=rows, missing=missing)


def model_agreement(model: str = "yolo11n-pst.yaml", kernel: str = "sage", imgsz: int = 256, images: int = 4,
                    ks=(0, 8), dtype=torch.float16, sharpen: float = 12.0) -> list:
    """A whole PST model (seeded initialisation, BatchNorms folded) in ``dtype`` with ``PST_ATTN=kernel`` against the
    same model with the ``reference`` kernel, on generated photographs (``pst_yolo.data.photos``), at each k of ``ks``.
    A seeded, untrained model, its PSA layers' inputs rescaled to unit scale and their projections re-initialised (see
    the comment in the code): it checks the kernels inside a real forward, not a trained model's accuracy.
    At 256 px every coarse key count of the paper's layout is a multiple of 64 (8 x 8 and 16 x 16), so SageAttention
    serves both PSA layers at k=0; at k > 0 the coarse output comes from the log-sum-exp pass and the masked fine
    attention from SDPA (no library takes a mask), which the row's ``served`` counts show.

    Returns one row per k: the correlation and largest relative difference of the PSA layers' outputs and of the raw
    model output, the largest class-score difference, and the kernels that served (call counts).
    """
    import numpy as np
    from ultralytics import YOLO

    from pst_yolo.data.photos import _photo_image
    from pst_yolo.runtime import set_topk
    from pst_yolo.training import pst_attention

    torch.manual_seed(0)
    net = YOLO(model).model.fuse().eval()
    for m in pst_attention(net):
        # An untrained model's PSA inputs are ~1e-6 (fresh BatchNorms, std-0.02 convs; zeros in float16) and attend
        # uniformly, which no kernel gets wrong. So the PSA layers run in ``dtype`` on inputs rescaled to unit scale,
        # with PyTorch's conv init and queries scaled by ``sharpen``: logits that spread as a trained model's do. The
        # rest of the model stays float32 (float16 on a CPU would underflow it).
        m.register_forward_pre_hook(lambda m, args: tuple((t / t.std().clamp_min(1e-12)).to(dtype) for t in args))
        m.register_forward_hook(lambda m, args, out: out.float())
        for conv in (m.q.conv, m.k.conv, m.v.conv):
            conv.reset_parameters()
        m.q.conv.weight.data *= sharpen
        m.to(dtype)
    rng = np.random.default_rng(0)
    batch = torch.stack([torch.from_numpy(_photo_image(rng, imgsz)[0]).permute(2, 0, 1) for _ in range(images)])
    x = batch.float() / 255
    rows, layer_outs = [], []
    for m in pst_attention(net):
        m.register_forward_hook(lambda m, args, out: layer_outs.append(out.as_subclass(torch.Tensor).double().flatten()))
    for k in ks:
        set_topk(net, k)
        outs, served, layers = {}, {}, {}
        for name in ("reference", kernel):
            undo = _counting_backend(name, served.setdefault(name, {}))
            layer_outs.clear()
            try:
                with torch.no_grad():
                    y = net(as_cuda(x) if name == kernel else x)
            finally:
                undo()
            y = y[0] if isinstance(y, (list, tuple)) else y
            outs[name] = y.as_subclass(torch.Tensor).double().cpu()
            layers[name] = torch.cat(layer_outs)
        a, b = outs["reference"].flatten(), outs[kernel].flatten()
        la, lb = layers["reference"], layers[kernel]
        scores_a, scores_b = outs["reference"][:, 4:], outs[kernel][:, 4:]
        rows.append(dict(model=model, kernel=kernel, k=k, imgsz=imgsz, dtype=str(dtype).replace("torch.", ""),
                         psa_corr=float(torch.corrcoef(torch.stack([la, lb]))[0, 1]),
                         psa_max_rel=float((la - lb).abs().max() / la.abs().max()),
                         corr=float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
                         max_rel=float((a - b).abs().max() / a.abs().max()),
                         max_score_diff=float((scores_a - scores_b).abs().max()), served=served[kernel]))
    return rows


def _counting_backend(name: str, counts: dict, when=None):
    """Select backend ``name`` and count the kernels ``choose_kernel`` picks into ``counts`` (only while ``when()``
    holds, if given); returns the undo."""
    from pst_yolo import attention as A

    choose = A.choose_kernel

    def counting(*args, **kwargs):
        chosen = choose(*args, **kwargs)
        if when is None or when():
            counts[chosen] = counts.get(chosen, 0) + 1
        return chosen

    A.set_backend(name)
    A.choose_kernel = counting

    def undo():
        A.choose_kernel = choose
        A.set_backend(None)

    return undo


def _validate(weights, data, name: str, k: int, imgsz: int, batch: int, dtype) -> dict:
    """One validation of ``weights`` by Ultralytics' validator with attention backend ``name`` at top-k ``k`` (a kernel
    other than ``reference``: the PSA layers in ``dtype`` on reported-CUDA tensors). Returns its mAPs, raw outputs,
    batch sizes and the kernels that served its batches."""
    from ultralytics import YOLO

    from pst_yolo.runtime import set_topk
    from pst_yolo.training import pst_attention

    model = YOLO(str(weights))
    outs, counts, sizes, hooks, state = [], {}, set(), [], {"real": False}
    if name != "reference":
        def to_kernel(m, args):
            m.to(dtype)  # the validator casts the whole model to float32 after these hooks are set
            return tuple(as_cuda(t.to(dtype)) for t in args)

        for m in pst_attention(model.model):
            hooks.append(m.register_forward_pre_hook(to_kernel))
            hooks.append(m.register_forward_hook(lambda m, args, out: out.as_subclass(torch.Tensor).float()))
    # only the validator's batches: not its warm-up (uninitialised memory) nor the layers' stride probes
    model.add_callback("on_val_batch_start", lambda v: state.update(real=True))
    model.add_callback("on_val_batch_end", lambda v: state.update(real=False))

    def batch_in(m, args):
        if state["real"]:
            sizes.add(tuple(args[0].shape[-2:]))

    def head_out(m, args, out):
        if state["real"]:
            outs.append((out[0] if isinstance(out, (list, tuple)) else out).detach().double())

    hooks.append(model.model.register_forward_pre_hook(batch_in))
    hooks.append(model.model.model[-1].register_forward_hook(head_out))
    set_topk(model.model, k)
    undo = _counting_backend(name, counts, when=lambda: state["real"])
    try:
        # the validator letterboxes square images to imgsz + 32 (rect batches, half a stride of padding)
        res = model.val(data=str(data), imgsz=imgsz - 32, batch=batch, device="cpu", plots=False, verbose=False,
                        workers=0)
    finally:
        undo()
        for h in hooks:
            h.remove()
    raw = torch.cat([o.flatten() for o in outs])
    if not torch.isfinite(raw).all():
        raise FloatingPointError(f"pst_yolo.kernel_check: {(~torch.isfinite(raw)).sum()} non-finite raw outputs "
                                 f"validating {weights} at k={k} with {name!r}")
    return dict(map=float(res.box.map), map50=float(res.box.map50), raw=raw, sizes=sorted(sizes), served=counts)


def val_agreement(weights, data, kernels=("sage",), imgsz: int = 256, batch: int = 8, dtype=torch.float16,
                  ks=(0, 8)) -> list:
    """A trained checkpoint validated by Ultralytics' own validator per k with each of ``kernels``
    (``PST_ATTN=<kernel>``, its PSA layers in ``dtype`` on reported-CUDA tensors) and once with the float32
    ``reference`` kernel. The stock layers around the PSA layers run in float32 on the CPU every time (a CPU has no fast float16
    convolutions), so a difference is the kernel's and that of the half precision it needs.

    ``imgsz`` picks the coarse key counts: at 256 px every coarse key count of the shipped layouts is a multiple of 64
    (P4 16 x 16, P5 8 x 8), so SageAttention serves every coarse pass at k=0; the ``served`` counts say what ran.

    Returns one row per (kernel, k): mAP50-95 and mAP50 with the kernel and with ``reference``, the correlation and
    largest relative difference of the raw outputs over every validation image, and the kernels that served.
    """
    rows = []
    for k in ks:
        ref = _validate(weights, data, "reference", k, imgsz, batch, dtype)
        for kernel in kernels:
            got = _validate(weights, data, kernel, k, imgsz, batch, dtype)
            a, b = ref["raw"], got["raw"]
            rows.append(dict(weights=str(weights), kernel=kernel, k=k, imgsz=got["sizes"],
                             dtype=str(dtype).replace("torch.", ""), map_reference=ref["map"], map_kernel=got["map"],
                             map50_reference=ref["map50"], map50_kernel=got["map50"],
                             corr=float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
                             max_rel=float((a - b).abs().max() / a.abs().max()), served=got["served"]))
    return rows


def in_subprocess(args=(), timeout: float = 900) -> dict:
    """Run this module in a fresh interpreter with Triton's interpreter on (it must be set before Triton is imported);
    returns its JSON report."""
    import subprocess

    env = {**os.environ, **INTERPRETER_ENV}
    p = subprocess.run([sys.executable, "-m", "pst_yolo.kernel_check", "--json", *args], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"pst_yolo.kernel_check failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pst_yolo.kernel_check", description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", nargs="+", default=["sage", "flash"], choices=["sage", "flash"])
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"])
    ap.add_argument("--layouts", nargs="*", default=list(LAYOUTS), help="(none: skip the shape checks)")
    ap.add_argument("--sizes", nargs="+", type=int, default=None, metavar="PX",
                    help="square input sizes (default: 128 160 320 640 1280 and 480x352)")
    ap.add_argument("--model", default="yolo11n-pst.yaml",
                    help="the whole model checked with each kernel against 'reference' ('' skips it)")
    ap.add_argument("--weights", default=None,
                    help="a trained checkpoint validated with each kernel and with 'reference' (needs --data)")
    ap.add_argument("--data", default=None, help="the data YAML --weights is validated on")
    ap.add_argument("--val-imgsz", type=int, default=256,
                    help="validation size of --weights (256: every coarse key count a multiple of 64)")
    ap.add_argument("--val-ks", nargs="+", type=int, default=[0, 8], help="the top-k values --weights is validated at")
    ap.add_argument("--json", action="store_true", help="print one JSON line (the report) at the end")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and any(os.environ.get(k) != v for k, v in INTERPRETER_ENV.items()):
        os.execve(sys.executable, [sys.executable, "-m", "pst_yolo.kernel_check", *(argv or sys.argv[1:])],
                  {**os.environ, **INTERPRETER_ENV})

    def progress(r):
        if not args.json:
            print(f"{r['kernel']:5} {'library' if r['direct'] else 'pst-yolo':8} served by {r['served']:5} "
                  f"{r['dtype']:8} heads={r['heads']} N={r['n']:5} M={r['m']:4} d={r['d']}: mean err "
                  f"{r['mean_err']:.2e} (tol {r['tol_mean']:.2e}), max {r['max_err']:.2e} (tol {r['tol_max']:.2e}) "
                  f"{'(same keys) ' if r['same_keys'] else ''}{'ok' if r['ok'] else 'FAIL'}", flush=True)

    if not args.json:
        where = "CUDA" if torch.cuda.is_available() else "CPU, Triton's interpreter"
        print(f"pst_yolo.kernel_check: {', '.join(args.kernels)} at every PSA coarse shape of {len(args.layouts)} "
              f"layouts ({where})", flush=True)
    sizes = SIZES if args.sizes is None else tuple((px, px) for px in args.sizes)
    report = run(tuple(args.kernels), tuple(args.layouts), sizes, dtypes=tuple(getattr(torch, d) for d in args.dtypes),
                 progress=progress)
    report["models"] = []
    for kernel in (kn for kn in args.kernels if kn not in report["missing"]) if args.model else ():
        for row in model_agreement(args.model, kernel):
            report["models"].append(row)
            if not args.json:
                print(f"{kernel:5} whole {row['model']} at k={row['k']}, {row['imgsz']} px, {row['dtype']}: PSA outputs "
                      f"correlate {row['psa_corr']:.7f} with 'reference' (largest difference {row['psa_max_rel']:.1e} "
                      f"of the largest output), raw outputs {row['corr']:.7f}; served by {row['served']}", flush=True)
    report["val"] = []
    if args.weights:
        if not args.data:
            ap.error("--weights needs --data (the data YAML to validate on)")
        kernels = tuple(kn for kn in args.kernels if kn not in report["missing"])
        for row in val_agreement(args.weights, args.data, kernels, imgsz=args.val_imgsz, ks=tuple(args.val_ks)):
            report["val"].append(row)
            if not args.json:
                print(f"{row['kernel']:5} {row['weights']} validated at k={row['k']}, {row['imgsz']} px, PSA in "
                      f"{row['dtype']}: mAP50-95 {row['map_kernel']:.4f} ('reference' {row['map_reference']:.4f}, "
                      f"difference {row['map_kernel'] - row['map_reference']:+.4f}), raw outputs correlate "
                      f"{row['corr']:.7f} (largest difference {row['max_rel']:.1e}); served by {row['served']}",
                      flush=True)
    if args.json:
        print(json.dumps(report))
    for kernel, why in report["missing"].items():
        print(f"{kernel}: not run ({why})", file=sys.stderr)
    bad = [r for r in report["rows"] if not r["direct"] and not r["ok"]]
    return 1 if bad and not args.json else 0


if __name__ == "__main__":
    sys.exit(main())
