"""Whether a CUDA GPU is present, asked without importing PyTorch on a machine that has none; and how many CPU
cores this process may use.

Importing PyTorch costs about a second and 180 MB, which a CPU-only query process (ONNX Runtime embeddings, the
extractive answer) otherwise never pays. NVIDIA's management library (NVML, installed with the driver) counts the
GPUs first: where it is missing or counts none, there is no CUDA GPU and PyTorch is not imported; otherwise
PyTorch has the last word (a CPU build, or ``CUDA_VISIBLE_DEVICES=""``, still says no). NVML, unlike CUDA itself,
can be asked before ``fork`` without breaking CUDA in the children.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_NVML = {"linux": "libnvidia-ml.so.1", "win32": "nvml.dll"}


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing PyTorch where NVML finds no NVIDIA GPU."""
    if "torch" not in sys.modules and sys.platform in _NVML and nvidia_gpus() == 0:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def nvidia_gpus() -> int:
    """How many NVIDIA GPUs NVML counts (0 where its library is missing or fails)."""
    try:
        nvml = ctypes.CDLL(_NVML.get(sys.platform, "libnvidia-ml.so.1"))
    except OSError:
        return 0
    try:
        if nvml.nvmlInit_v2() != 0:
            return 0
    except AttributeError:  # pragma: no cover - an NVML older than 2015
        return 0
    try:
        count = ctypes.c_uint(0)
        return count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        nvml.nvmlShutdown()


@functools.cache
def process_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform tells it, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
