"""Attention kernels behind one entry point.

PSA calls :func:`attention` for its coarse and its fine branch. Every kernel computes exactly
``softmax(q @ k^T * scale + mask) @ v`` (SageAttention approximately: it quantises q and k to int8).

Which kernel runs, in order of precedence:
1. the module's own ``backend`` attribute / the ``backend=`` argument,
2. :func:`set_backend` (process-wide, Python API),
3. the ``PST_ATTN`` environment variable,
4. ``"auto"``: the first kernel of ``AUTO_ORDER`` that can serve the call (device, dtype, head dim, mask, autograd).

Kernels:
- ``reference``: explicit softmax, the tests' ground truth; runs everywhere, exports, has a backward.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; runs everywhere, exports, has a backward. The
  universal fallback.
- ``flash``: ``flash_attn.flash_attn_func`` (extra ``pst-yolo[flash]``): CUDA, fp16/bf16, head dim % 8 == 0 and <= 256,
  no mask; has a backward. Layout (B, N, heads, d), so the adapter transposes.
- ``sage``: ``sageattention.sageattn`` (extra ``pst-yolo[sage]``): CUDA, fp16/bf16, head dim <= 128 (zero-padded to
  64, 96 or 128, the library's kernels), a key count that is a multiple of 64 (``SAGE_KEY_BLOCK``), no mask, inference
  only; gets copies (its smooth_k works in place). It quantises QK^T to int8, so ``auto`` never picks it; ask for it
  by name. ``pst_yolo.kernel_check`` executes both libraries' kernels (Triton's interpreter on a CPU).

A call the requested kernel cannot serve falls back to SDPA with a one-time warning naming the reason. While tracing
for export only ``reference`` and ``sdpa`` are used (plain ONNX-exportable ops); ``auto`` exports ``reference``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from pst_yolo.extras import load_symbol
from pst_yolo.log import log_once
from pst_yolo.tracing import in_export

ENV_BACKEND = "PST_ATTN"
AUTO = "auto"
DEFAULT_BACKEND = AUTO
FALLBACK = "sdpa"
AUTO_ORDER = ("flash", "sdpa")  # exact kernels only; "sage" is opt-in (int8 QK^T)
EXPORTABLE = ("reference", "sdpa")
_HALF = (torch.float16, torch.bfloat16)
_GLOBAL_BACKEND: str | None = None


def reference_attention(q, k, v, mask=None, scale=None):
    """Plain attention with an explicit softmax (no fused kernel); the tests' ground truth and the exported form.

    The scale multiplies q before the first MatMul: N*d multiplications instead of N*M, and the MatMul -> Softmax ->
    MatMul pattern (scale on Q) that TensorRT's attention fusion recognises in an ONNX graph.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.dtype in _HALF and not in_export():
        # float16 logits overflow past 65504 (and bfloat16 ones keep 8 bits): softmax in float32, as SDPA's fused
        # kernels accumulate; exported graphs keep the plain pattern (TensorRT's fusion does this itself)
        with no_autocast(q.device.type):
            mask = mask if mask is None else mask.float()
            return reference_attention(q.float(), k.float(), v.float(), mask, scale).to(q.dtype)
    logits = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits + mask
    return logits.softmax(dim=-1) @ v


def no_autocast(device_type: str):
    """Autocast off for ``device_type``; nothing to switch off where autocast does not exist (the meta device)."""
    available = getattr(torch.amp, "is_autocast_available", lambda d: d in ("cpu", "cuda"))(device_type)
    return torch.autocast(device_type, enabled=False) if available else contextlib.nullcontext()


def sdpa_attention(q, k, v, mask=None, scale=None):
    """PyTorch ``scaled_dot_product_attention`` (picks flash / memory-efficient / math kernels itself)."""
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    # PSA's heads are transposed views; SDPA's fused CPU kernel is ~4x slower on them than on contiguous copies
    # (measured at the P3 level of a 640 px image: 140 ms vs 30 ms), and the copies are only N*d floats.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _library_kernel(module: str, attr: str, mask):
    """The optional library's kernel function; neither library takes a mask (``why_not`` routes masked calls away)."""
    fn, why = load_symbol(module, attr)
    if fn is None:
        raise RuntimeError(f"pst-yolo: attention kernel {module}.{attr} unavailable: {why}")
    if mask is not None:
        raise ValueError(f"pst-yolo: {module}.{attr} takes no attention mask")
    return fn


def flash_attention(q, k, v, mask=None, scale=None):
    """FlashAttention-2 ``flash_attn_func``; takes/returns (B, heads, N, d) like the other kernels."""
    return flash_attention_lse(q, k, v, mask, scale, lse=False)


def flash_attention_lse(q, k, v, mask=None, scale=None, lse=True):
    """FlashAttention-2 ``flash_attn_func`` with (``lse=True``) each query's log-sum-exp of the scaled logits: returns
    ``(out, lse)``, out (B, heads, N, d), lse (B, heads, N) float32 (the library's ``softmax_lse``, natural log)."""
    fn = _library_kernel("flash_attn", "flash_attn_func", mask)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # flash_attn wants (B, N, heads, d) with a contiguous last dim.
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    if not lse:
        return fn(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=False).transpose(1, 2)
    out, logsumexp, _ = fn(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=False, return_attn_probs=True)
    return out.transpose(1, 2), logsumexp


# Head dims sageattention 1.0.6 compiles kernels for; smaller ones are zero-padded up to the next of these.
SAGE_HEAD_DIMS = (64, 96, 128)
# sageattention 1.0.6 walks the keys in blocks of 64 and masks the loads of a partial last block but not its logits: the
# padding keys join the softmax with logit 0 (mean error 48-65% of the output at 16-25 keys, 4-7% at 400-660; executed
# under Triton's interpreter, pst_yolo.kernel_check; docs/performance.md). No padding of the keys is exact (a padded key needs a logit of -inf,
# which int8 keys cannot give), so other key counts go to SDPA.
SAGE_KEY_BLOCK = 64


def sage_attention(q, k, v, mask=None, scale=None):
    """SageAttention ``sageattn`` (int8 QK^T, fp16 PV), layout "HND" = (B, heads, N, d).

    Head dims are zero-padded to 64, 96 or 128 (zero channels change neither q.k nor the first d output channels).
    The library's ``smooth_k`` subtracts the key mean from its input in place, so it always gets tensors of its own.
    """
    fn = _library_kernel("sageattention", "sageattn", mask)
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    target = next((s for s in SAGE_HEAD_DIMS if s >= d), None)
    if target is None:
        raise ValueError(f"pst-yolo: sageattention supports head dims up to {SAGE_HEAD_DIMS[-1]}, got {d}")
    pad = target - d
    # F.pad always allocates; clone() where no padding is needed: the caller's q/k/v are never handed over.
    q, k, v = (F.pad(t, (0, pad)) if pad else t.clone(memory_format=torch.contiguous_format) for t in (q, k, v))
    out = fn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=scale)
    return out[..., :d] if pad else out


def _cuda_half_unmasked(q, mask):
    """What both optional CUDA kernels require: CUDA fp16/bf16 tensors and no mask."""
    if not q.is_cuda:
        return "needs a CUDA tensor"
    if q.dtype not in _HALF:
        return f"needs float16/bfloat16, got {q.dtype}"
    if mask is not None:
        return "does not take an attention mask"
    return None


def _flash_supports(q, k, v, mask):
    d = q.shape[-1]
    if d % 8 or d > 256:
        return f"head dim {d} unsupported (needs a multiple of 8, <= 256)"
    return _cuda_half_unmasked(q, mask)


def _sage_supports(q, k, v, mask):
    if q.shape[-1] > SAGE_HEAD_DIMS[-1]:
        return f"head dim {q.shape[-1]} unsupported (needs <= {SAGE_HEAD_DIMS[-1]}; padded to one of {SAGE_HEAD_DIMS})"
    why = _cuda_half_unmasked(q, mask)
    if why is None and k.shape[-2] % SAGE_KEY_BLOCK:
        why = (f"{k.shape[-2]} keys, not a multiple of {SAGE_KEY_BLOCK} (sageattention 1.0.6 leaves the padding of its "
               f"last key block in the softmax)")
    return why


def _builtin(q, k, v, mask):
    return None


def _always_available():
    return None


@dataclass(frozen=True)
class Kernel:
    """One attention implementation and the calls it can serve.

    ``supports(q, k, v, mask)`` and ``available()`` return why not, or None if fine; ``backward`` says whether autograd
    can run through it.
    """

    fn: Callable
    supports: Callable[..., str | None] = _builtin
    available: Callable[[], str | None] = _always_available
    backward: bool = True


KERNELS: dict[str, Kernel] = {
    "reference": Kernel(reference_attention),
    "sdpa": Kernel(sdpa_attention),
    "flash": Kernel(flash_attention, _flash_supports, lambda: load_symbol("flash_attn", "flash_attn_func")[1], True),
    "sage": Kernel(sage_attention, _sage_supports, lambda: load_symbol("sageattention", "sageattn")[1], False),
}
def _check_name(name: str, src: str) -> str:
    if name != AUTO and name not in KERNELS:
        raise ValueError(f"pst-yolo: unknown attention kernel {name!r} (from {src}); choose one of {[AUTO, *KERNELS]}")
    return name


def set_backend(name: str | None) -> None:
    """Choose the attention kernel for the whole process (``None`` restores ``$PST_ATTN`` / ``"auto"``).

    A module's own ``backend`` attribute still wins. Example: ``pst_yolo.attention.set_backend("reference")``.
    """
    global _GLOBAL_BACKEND
    _GLOBAL_BACKEND = None if name is None else _check_name(name, "set_backend()")


def get_backend() -> str:
    """The process-wide requested kernel: ``set_backend`` value, else ``$PST_ATTN``, else ``"auto"``."""
    if _GLOBAL_BACKEND is not None:
        return _GLOBAL_BACKEND
    env = os.environ.get(ENV_BACKEND)
    return _check_name(env, f"environment variable {ENV_BACKEND}") if env else DEFAULT_BACKEND


def resolve_backend(name: str | None = None) -> str:
    """Return the requested kernel name (may be ``"auto"``): ``name``, else the process-wide setting; validated."""
    return _check_name(name, "argument") if name else get_backend()


def why_not(name: str, q, k, v, mask=None) -> str | None:
    """Why kernel ``name`` cannot serve this call (None if it can)."""
    kernel = KERNELS[name]
    if in_export() and name not in EXPORTABLE:
        return "cannot be exported"
    if not kernel.backward and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "has no backward pass (training needs one)"
    why = kernel.supports(q, k, v, mask)  # cheap shape/device checks first: CPU users never import CUDA packages
    return why if why is not None else kernel.available()


def choose_kernel(q, k, v, mask=None, backend: str | None = None) -> str:
    """Name of the kernel that will serve this call; fallbacks and the choice are logged once."""
    requested = resolve_backend(backend)
    if requested == AUTO and in_export():
        return "reference"  # explicit MatMul -> Softmax -> MatMul: the exported form (see reference_attention)
    if requested != AUTO:
        why = why_not(requested, q, k, v, mask)
        if why is None:
            return requested
        log_once(
            ("fallback", requested, why),
            f"pst-yolo: attention kernel {requested!r} cannot serve this call ({why}); using {FALLBACK!r}",
            logging.WARNING,
        )
        return FALLBACK
    for name in AUTO_ORDER:
        if why_not(name, q, k, v, mask) is None:
            log_once(("auto", name, q.device.type, q.dtype), f"pst-yolo: attention kernel {name!r} ({q.device.type}, {q.dtype})")
            return name
    return FALLBACK


def attention(q, k, v, mask=None, scale=None, backend: str | None = None):
    """Multi-head attention ``softmax(q k^T * scale + mask) v``.

    Args:
        q (torch.Tensor): Queries (B, heads, N, d).
        k (torch.Tensor): Keys (B, heads, M, d).
        v (torch.Tensor): Values (B, heads, M, d).
        mask (torch.Tensor | None): Additive float mask broadcastable to (B, heads, N, M).
        scale (float | None): Logit scale, default ``d ** -0.5``.
        backend (str | None): Kernel name (see ``KERNELS``) or ``"auto"``; default from :func:`set_backend`,
            ``$PST_ATTN`` or ``"auto"``.

    Returns:
        (torch.Tensor): Output (B, heads, N, d).
    """
    return KERNELS[choose_kernel(q, k, v, mask, backend)].fn(q, k, v, mask, scale)
