"""What decides a run's arithmetic besides params, code and data, and the portable mode that pins it.

Two x86 machines with the same torch, threads and params can still round differently: torch
dispatches its vectorised kernels by CPU family (``ATEN_CPU_CAPABILITY``: AVX-512 here, AVX2
elsewhere), MKL picks its GEMM code path by CPU (``MKL_CBWR``, MKL's conditional numerical
reproducibility) and oneDNN its convolution ISA (``ONEDNN_MAX_CPU_ISA``). Each metrics file's
``env`` therefore names the CPU, the BLAS/oneDNN build and any of these pins.

The portable mode (``DFA_PORTABLE=1`` or ``--portable``) sets the pins before torch is loaded,
so every x86-64 CPU with AVX2 (Intel since 2013, AMD since 2015) takes the same kernel paths.
This module does not import torch: the pins only act if they are in the environment before it
loads.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from pathlib import Path

# The environment variables that choose a kernel path; all three are read once, when torch
# (ATen), MKL or oneDNN first needs them.
KERNEL_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
# ``DFA_PORTABLE`` values → pins. ``avx2`` (what ``1`` means): the widest path every current
# x86-64 server has. ``compatible``: MKL's and ATen's baseline paths (SSE), slower, for CPUs
# without AVX2 or a non-Intel CPU where MKL's AVX2 branch is not guaranteed.
PORTABLE_LEVELS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "compatible": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
PORTABLE_ALIASES = {"1": "avx2", "true": "avx2", "yes": "avx2", "on": "avx2"}
OFF = ("", "0", "false", "no", "off")


class PortableError(RuntimeError):
    """A portable mode that cannot act (unknown level, torch already loaded with other kernels)."""


def portable_level(value: str | None) -> str | None:
    """``DFA_PORTABLE``'s value → a key of ``PORTABLE_LEVELS``, or None when off."""
    v = (value or "").strip().lower()
    if v in OFF:
        return None
    level = PORTABLE_ALIASES.get(v, v)
    if level not in PORTABLE_LEVELS:
        raise PortableError(f"DFA_PORTABLE={value!r}: expected 1, {', '.join(PORTABLE_LEVELS)} or 0")
    return level


def apply_portable(level: str) -> dict[str, str]:
    """Put ``level``'s pins into ``os.environ`` (and ``DFA_PORTABLE``, for child processes).

    Must run before torch is imported; if torch is already loaded with another CPU capability,
    the pin could not act, and this says so instead of recording a mode that did not apply.
    """
    pins = PORTABLE_LEVELS[level]
    if "torch" in sys.modules:
        import torch
        have = torch.backends.cpu.get_cpu_capability()
        if have.upper() != pins["ATEN_CPU_CAPABILITY"].upper():  # torch spells them AVX2, DEFAULT
            raise PortableError(f"portable mode {level}: torch is already loaded with {have} kernels; "
                                "set DFA_PORTABLE in the environment before python starts")
    os.environ.update(pins)
    os.environ["DFA_PORTABLE"] = level
    return dict(pins)


def cpu_model() -> dict[str, str]:
    """The CPU's vendor and model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    info = {"vendor": "", "model": ""}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not info["vendor"]:
            info["vendor"] = value.strip()
        elif key == "model name" and not info["model"]:
            info["model"] = " ".join(value.split())
    if not info["model"]:
        info["model"] = platform.processor() or platform.machine()
    return info


def torch_build(show: str) -> dict[str, str]:
    """The lines of ``torch.__config__.show()`` that decide CPU arithmetic, short and stable:
    the BLAS (``BLAS_INFO``), MKL's and oneDNN's versions, and a hash of the whole text."""
    out = {}
    if m := re.search(r"BLAS_INFO=([^,\s]+)", show):
        out["blas"] = m.group(1)
    if m := re.search(r"Math Kernel Library Version ([\w.\-]+)", show):
        out["mkl"] = m.group(1)
    if m := re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", show):
        out["onednn"] = m.group(1)
    out["config_sha"] = hashlib.sha256(show.encode()).hexdigest()[:12]
    return out


def kernel_env() -> dict:
    """``env`` entries for the kernel paths: the portable level (or false) and any pins set."""
    level = os.environ.get("DFA_PORTABLE")
    try:
        level = portable_level(level)
    except PortableError:
        pass
    pins = {k: os.environ[k] for k in KERNEL_VARS if os.environ.get(k)}
    return {"portable": level or False, **({"kernel_pins": pins} if pins else {})}
