"""The CPU's vector instruction sets (AVX2, AVX-512, VNNI, AMX), recorded beside every figure this project quotes.

Why: "AMD EPYC" or "Intel Xeon" names CPU generations with different vector units, and those decide two things the
figures depend on: the rounding of float32 matmuls (oneDNN / MKL pick their kernels by instruction set, so a seeded
300-step run ends at a different mAP on each) and the speed of int8 inference (VNNI / AMX have int8 dot products,
AVX2 has not). ``describe_cpu()`` goes into ``run_info.json``, ``eval.py``'s results and every benchmark result.
"""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

__all__ = ["ISA_FAMILIES", "describe_cpu", "describe_cpu_line", "isa_label"]

# Each family the figures depend on, and the CPU flags (as Linux's /proc/cpuinfo spells them) that show it.
ISA_FAMILIES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),  # int8 dot products: AVX-512 VNNI, or the 256-bit AVX-VNNI
    "AMX": ("amx_tile", "amx_int8", "amx_bf16"),
}
_FLAG_PATTERN = re.compile(r"^(avx2|avx512\w*|avx_vnni\w*|amx_\w+)$")


CPUINFO = Path("/proc/cpuinfo")


def _read_proc_cpuinfo(path: Path = CPUINFO) -> tuple[str | None, str | None, set[str]] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    field = lambda name: (m.group(1).strip() if (m := re.search(rf"^{name}\s*:\s*(.*)$", text, re.M)) else None)  # noqa: E731
    return field("model name"), field("vendor_id"), set((field("flags") or "").split())


def _read_sysctl() -> tuple[str | None, str | None, set[str]] | None:
    """macOS on Intel: the same flags, upper-case and dotted (AVX2, AVX512F, AVX512VNNI)."""
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "machdep.cpu.vendor",
                              "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) < 3:
        return None
    spelled = {"AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni"}
    flags = {spelled.get(f, f.lower().replace(".", "_")) for f in " ".join(lines[2:]).split()}
    return lines[0].strip(), lines[1].strip(), flags


def _read_cpu(cpuinfo: Path = CPUINFO) -> tuple[str | None, str | None, set[str] | None]:
    """Model name, vendor and the vector-unit flags (None where the operating system does not say: then only
    torch's view is recorded)."""
    read = _read_proc_cpuinfo(cpuinfo) or _read_sysctl()
    if read is None:
        return None, None, None
    model, vendor, flags = read
    return model, vendor, {f for f in flags if _FLAG_PATTERN.match(f)}


def isa_label(flags: set[str] | None) -> str | None:
    """The families present, e.g. ``"AVX2"`` (an AVX2-only AMD EPYC) or ``"AVX2+AVX-512+VNNI+AMX"`` (a Sapphire
    Rapids Xeon); None when the flags are unknown. Figures are keyed by this label."""
    if flags is None:
        return None
    present = [name for name, spellings in ISA_FAMILIES.items() if flags & set(spellings)]
    return "+".join(present) or "none of " + ", ".join(ISA_FAMILIES)


def _torch_view() -> tuple[str | None, int | None]:
    try:
        import torch
    except ImportError:
        return None, None
    get_capability = getattr(torch.backends.cpu, "get_cpu_capability", None)  # torch >= 2.1
    return (get_capability() if get_capability else None), torch.get_num_threads()


def describe_cpu(cpuinfo: Path = CPUINFO) -> dict:
    """CPU model, vendor, the ISA label, the relevant flags, torch's own view (the kernels ATen dispatches to:
    ``DEFAULT``, ``AVX2``, ``AVX512``, ...) and its thread count (it changes the rounding too), as one JSON-ready dict. ``cpuinfo``: Linux's file (another path in
    tests); where it cannot be read, macOS's ``sysctl``, else the flags are None."""
    model, vendor, flags = _read_cpu(cpuinfo)
    capability, threads = _torch_view()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "vendor": vendor,
        "isa": isa_label(flags),
        "isa_flags": None if flags is None else sorted(flags),
        "torch_cpu_capability": capability,
        "torch_threads": threads,
    }


def describe_cpu_line(info: dict | None = None) -> str:
    """One line for logs and Markdown: ``AMD EPYC (AVX2; torch kernels AVX2)``."""
    info = info or describe_cpu()
    isa = info["isa"] or "instruction sets unknown"
    return f"{info['cpu']} ({isa}; torch kernels {info['torch_cpu_capability'] or 'unknown'})"
