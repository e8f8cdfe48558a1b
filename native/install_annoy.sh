#!/bin/sh
# Installs Annoy (the version setup.py pins) compiled the same way on every machine: the
# Makefile's virtualenv, CI and the Dataflow image all run this script.
#
#     sh native/install_annoy.sh PYTHON
#
# Annoy ships only a source distribution, and its setup.py compiles for the machine it
# runs on (-march=native -ffast-math): on an AVX-512 CPU the extension holds AVX-512
# instructions, takes its AVX-512 code path and writes other index bytes than on an AVX2
# CPU, and a worker whose CPU lacks the builder's instructions would stop on SIGILL.
# Here it is compiled for the x86-64 baseline every 64-bit x86 CPU runs (SSE2; Annoy then
# takes its plain C++ path), with IEEE floating point: no -ffast-math, no fused
# multiply-add. Every float operation is then the same on every CPU and with every
# compiler, so the same vectors give the same index bytes everywhere.
# tests/test_native.py reads the installed extension and fails on any instruction above
# that baseline. --no-cache-dir: pip's wheel cache would hand back a wheel built earlier
# with other flags.
set -eu
PYTHON=${1:-python3}
ANNOY_PIN=$(sed -n 's/^ *"\(annoy==[0-9.]*\)",.*/\1/p' "$(dirname "$0")/../setup.py")
[ -n "$ANNOY_PIN" ] || { echo "native/install_annoy.sh: no annoy pin in setup.py" >&2; exit 1; }
ANNOY_COMPILER_ARGS="-O3,-march=x86-64,-mtune=generic,-fno-fast-math,-ffp-contract=off"
ANNOY_COMPILER_ARGS="$ANNOY_COMPILER_ARGS,-std=c++14,-DANNOYLIB_MULTITHREADED_BUILD"
ANNOY_COMPILER_ARGS="$ANNOY_COMPILER_ARGS,-D_CRT_SECURE_NO_WARNINGS,-fpermissive"
export ANNOY_COMPILER_ARGS
"$PYTHON" -m pip install --quiet --no-cache-dir --no-deps --force-reinstall \
    --no-binary annoy "$ANNOY_PIN"
