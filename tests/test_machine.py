"""The CPU's instruction sets are recorded beside every figure: benchmark results, run_info.json, eval results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mmreid.machine import describe_cpu, isa_label

REPO = Path(__file__).resolve().parents[1]

# /proc/cpuinfo "flags" lines of three CPUs this project's figures were measured on or quoted for (cut to the
# vector-unit flags and a few others that must not count).
CPUS = {
    "AMD EPYC 7B13 (Zen 3)": ("AuthenticAMD", "fpu sse sse2 avx f16c fma avx2 bmi2 vaes vpclmulqdq", "AVX2"),
    "AMD EPYC 9B14 (Zen 4)": ("AuthenticAMD", "avx avx2 avx512f avx512dq avx512_bf16 avx512_vnni avx512vl",
                              "AVX2+AVX-512+VNNI"),
    "Intel(R) Xeon(R) Platinum 8481C (Sapphire Rapids)": (
        "GenuineIntel", "avx avx2 avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8",
        "AVX2+AVX-512+VNNI+AMX"),
    "Intel(R) Core(TM) i7-12700 (Alder Lake, AVX-VNNI without AVX-512)": ("GenuineIntel", "avx avx2 avx_vnni",
                                                                         "AVX2+VNNI"),
}


@pytest.mark.parametrize("model", CPUS)
def test_describe_cpu_reads_the_vector_units_from_cpuinfo(tmp_path, model):
    vendor, flags, label = CPUS[model]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
                       f"processor\t: 1\nvendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\n")
    info = describe_cpu(cpuinfo)
    assert info["cpu"] == model and info["vendor"] == vendor and info["isa"] == label
    assert "fpu" not in info["isa_flags"] and "avx" not in info["isa_flags"] and "avx2" in info["isa_flags"]
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_without_cpuinfo_the_flags_are_unknown_not_empty(tmp_path):
    info = describe_cpu(tmp_path / "no-such-cpuinfo")  # no /proc (and, on Linux, no macOS sysctl keys)
    assert info["isa"] is None and info["isa_flags"] is None
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isa_label(set()) == "none of AVX2, AVX-512, VNNI, AMX"  # an ARM CPU: known to have none of them


def test_run_info_and_benchmark_results_record_the_instruction_sets():
    from mmreid.training.run_info import collect_run_info

    assert collect_run_info({})["cpu"] == describe_cpu()
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from harness import describe_machine
        from report import markdown
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    machine = describe_machine("cpu")
    assert machine["isa"] == describe_cpu()["isa"] and machine["torch_cpu_capability"]
    text = markdown({"machine": json.loads(json.dumps(machine)), "command": "python benchmarks/run.py", "started": "now"})
    assert f"({machine['isa']}; torch CPU kernels {machine['torch_cpu_capability']})" in text.splitlines()[0]
    old = {k: v for k, v in machine.items() if k not in ("isa", "isa_flags", "torch_cpu_capability", "vendor")}
    assert "instruction sets not recorded" in markdown({"machine": old, "command": "x", "started": "then"})
