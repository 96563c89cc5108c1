"""The CPU the hot loop runs on: what it can do natively, and how the process uses its memory.

- :func:`keep_freed_memory` makes glibc reuse freed memory instead of mapping fresh pages: the
  single largest cost of a CPU training step before it (docs/guides/speed.md).
- :func:`native_dtypes` says which reduced precisions oneDNN runs natively here; the recipe's
  ``amp`` refuses the others on CPU, and ``amp: auto`` uses it (nasops.train.step.resolve_amp).
"""
from __future__ import annotations

import ctypes
import os
import platform

import torch

# What emulated reduced precision costs: a 1024 x 1024 matrix product with oneDNN restricted to
# AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) on an AVX-512 Xeon, 2 threads:
# float32 300 GFLOP/s, bf16 and fp16 1.1 (docs/guides/speed.md).
EMULATED_SLOWDOWN = {dtype: "about 270x slower than float32 (1.1 against 300 GFLOP/s, measured "
                            "with oneDNN restricted to AVX2)" for dtype in ("bf16", "fp16")}

# <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
MALLOC_CHOICES = ("nasops", "system")
_kept = False


def keep_freed_memory() -> bool:
    """Tells glibc's allocator to serve every block from its heap (no per-block mmap), to keep
    freed memory for reuse instead of returning it to the kernel (up to 2 GiB at the top of the
    heap), and to grow the heap 64 MiB at a time.

    By default glibc maps each block of 32 MiB or more anew and unmaps it on free, so every
    activation of a training step is page-faulted in and zeroed by the kernel again: 2.2 million
    page faults and about 40% of the attentive_nas sandwich step on this machine
    (docs/guides/speed.md). With the heap, freed blocks coalesce and are reused: the same step
    takes about 10,000 page faults, and its peak memory stays about where it was.

    It changes the whole process, so only what runs a whole job calls it: the training,
    evaluation and search commands, and ``nasops.train.train`` (on CPU); call it yourself to
    get the same speed from the rest of the Python API (``train_step``, ``Evaluator``).
    ``NASOPS_MALLOC=system`` leaves the allocator as it is. Returns whether it applied (glibc
    only; True again on later calls)."""
    global _kept
    choice = os.environ.get("NASOPS_MALLOC", "nasops")
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"NASOPS_MALLOC = {choice!r} is not allowed; allowed: {list(MALLOC_CHOICES)}")
    if _kept:
        return True
    if choice == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                 and mallopt(_M_TOP_PAD, 64 << 20))
    return _kept


def use_channels_last(setting: bool | str, device) -> bool:
    """The memory format of a recipe's ``channels_last`` value on `device`: True or False as
    given; "auto" is channels-last on CPU, where the nasops kernels (depthwise, batch norm +
    activation) are written for it and oneDNN's 1x1 convolutions run 2-3x faster on it, and
    NCHW on CUDA, where the nasops kernels read NCHW. Anything else is a ValueError."""
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ValueError(f"channels_last = {setting!r} is not allowed; allowed: True, False or "
                         f"'auto'")
    if setting == "auto":
        return torch.device(device).type == "cpu"
    return setting


def native_dtypes() -> dict[str, bool]:
    """Whether this CPU computes bfloat16 and float16 natively (oneDNN's own check: AVX-512
    BF16 / AMX, AVX-512 FP16; it follows ONEDNN_MAX_CPU_ISA). Without it oneDNN emulates them:
    EMULATED_SLOWDOWN."""
    mkldnn = torch.ops.mkldnn
    return {"bf16": bool(mkldnn._is_mkldnn_bf16_supported()),
            "fp16": bool(mkldnn._is_mkldnn_fp16_supported())}


def describe() -> str:
    """One line: the processor, the kernels' instruction set, threads and native precisions."""
    from .. import _C
    native = [k for k, v in native_dtypes().items() if v]
    return (f"{platform.processor() or platform.machine()}, nasops kernels {_C.cpu_isa()}, "
            f"PyTorch {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
            f"threads, native {'/'.join(native) or 'float32 only'}")
