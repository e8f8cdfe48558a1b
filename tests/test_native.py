"""Native code is built with portable flags: the same index bytes on every x86-64 CPU.

native/install_annoy.sh compiles Annoy for the x86-64 baseline with IEEE floating point.
These tests read the installed extension's machine code and fail on any instruction a
baseline x86-64 CPU lacks (an AVX-512 or AVX2 build would also write other index bytes),
and run the shard stage whose .ann bytes tests/test_shard.py pins on an emulated CPU of
another kind than this one.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import pytest

iced_x86 = pytest.importorskip("iced_x86")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What -march=x86-64 may emit: the 8086-486 integer and x87 instructions, long mode, CMOV,
# CMPXCHG8B, MMX, SSE and SSE2 (and the hint-space NOPs). Anything else (SSE3 and up, AVX,
# AVX2, FMA, AVX-512, BMI...) is above the baseline. ENDBR64 (CET) is a NOP to a CPU without
# CET.
BASELINE = {"CET_IBT", "INTEL8086", "INTEL8086_ONLY", "INTEL186", "INTEL286", "INTEL386", "INTEL486",
            "X64", "CMOV", "CX8", "FPU", "FPU287", "FPU387", "MMX", "SSE", "SSE2", "FXSR",
            "MULTIBYTENOP", "PAUSE", "CPUID", "TSC"}


def executable_sections(path: str):
    """-> [(name, virtual address, bytes)] of an x86-64 ELF file's executable sections."""
    with open(path, "rb") as stream:
        data = stream.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path}: not a 64-bit ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
               for i in range(shnum)]
    names_offset = headers[shstrndx][4]

    def name(offset):
        end = data.index(b"\0", names_offset + offset)
        return data[names_offset + offset:end].decode()

    executable = 0x4
    return [(name(h[0]), h[3], data[h[4]:h[4] + h[5]]) for h in headers
            if h[2] & executable and h[1] == 1]  # SHT_PROGBITS


def instructions_above_baseline(path: str) -> dict:
    """-> {CPUID feature above the baseline: an example instruction} in ``path``."""
    feature_names = {value: key for key, value in vars(iced_x86.CpuidFeature).items()
                     if not key.startswith("_") and isinstance(value, int)}
    found = {}
    for section, address, code in executable_sections(path):
        decoder = iced_x86.Decoder(64, code, ip=address)
        formatter = iced_x86.Formatter(iced_x86.FormatterSyntax.GAS)
        for instruction in decoder:
            if instruction.code == iced_x86.Code.INVALID:
                continue
            for feature in instruction.cpuid_features():
                name = feature_names.get(feature, str(feature))
                if name not in BASELINE and name not in found:
                    found[name] = f"{section}+{instruction.ip - address:#x}: " \
                                  f"{formatter.format(instruction)}"
    return found


def test_the_annoy_extension_holds_no_instruction_above_the_x86_64_baseline():
    from annoy import annoylib

    above = instructions_above_baseline(annoylib.__file__)
    assert not above, (f"{annoylib.__file__} was not built by native/install_annoy.sh: "
                       f"instructions above the x86-64 baseline: {above}")


def test_the_check_finds_avx_in_code_that_has_it(tmp_path):
    """The check itself: a small extension compiled for AVX-512 and AVX2 is caught."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    source = tmp_path / "dot.c"
    source.write_text("float dot(const float *a, const float *b, int n) {\n"
                      "  float s = 0; for (int i = 0; i < n; i++) s += a[i] * b[i];\n"
                      "  return s; }\n")
    for march, expected in (("skylake-avx512", "AVX512F"), ("haswell", "AVX")):
        library = tmp_path / f"dot-{march}.so"
        subprocess.run([compiler, "-O3", "-ffast-math", f"-march={march}",
                        "-mprefer-vector-width=512", "-shared", "-fPIC", str(source), "-o",
                        str(library)], check=True)
        assert expected in instructions_above_baseline(str(library))
    baseline = tmp_path / "dot-x86-64.so"
    subprocess.run([compiler, "-O3", "-march=x86-64", "-shared", "-fPIC", str(source),
                    "-o", str(baseline)], check=True)
    assert instructions_above_baseline(str(baseline)) == {}


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as stream:
            return " avx512f" in stream.read()
    except OSError:
        return False


def test_the_pinned_shard_bytes_hold_on_an_emulated_cpu_of_another_kind():
    """tests/test_shard.py pins a shard's .ann sha256 on this machine; the same build on
    an emulated CPU of another kind (AVX2 only where this one has AVX-512, and the other
    way round) writes the same bytes."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 is not installed (Debian package qemu-user; make test "
                    "installs it as root)")
    cpu = "Haswell-v4" if _has_avx512() else "Skylake-Server-v5"
    script = ("import pathlib, sys, tempfile\n"
              "from tests.test_shard import BEFORE, build, synthetic_items\n"
              "with tempfile.TemporaryDirectory() as folder:\n"
              "    print(build(pathlib.Path(folder), synthetic_items())['sha256'])\n")
    result = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", script], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    from tests.test_shard import BEFORE

    assert result.stdout.split()[-1] == BEFORE["index/shard-00002-of-00004.ann"], cpu
