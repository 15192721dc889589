#!/bin/sh
# Builds out/libllvmstubs.a from the undefined symbols that a failed link printed ($1: the build
# log). Every stub aborts with its name, so a call into CubeCL's LLVM route (never taken with
# cubecl-cuda's `cpp` feature, which compiles kernels with NVRTC) cannot pass silently.
set -e
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/out"
cd "$here/out"
grep -o "undefined symbol: [A-Za-z0-9_]*" "$1" | sed 's/undefined symbol: //' | sort -u > symbols.txt
[ -s symbols.txt ] || { echo "no undefined symbols in $1" >&2; exit 1; }
{
  echo '#include <stdio.h>'
  echo '#include <stdlib.h>'
  echo 'static void stub_called(const char *name) { fprintf(stderr, "segloss offline CUDA build: LLVM stub %s called%c", name, 10); abort(); }'
  while read -r s; do echo "void $s(void) { stub_called(\"$s\"); }"; done < symbols.txt
} > stubs.c
/usr/bin/cc -O1 -fPIC -c stubs.c -o stubs.o
ar rcs libllvmstubs.a stubs.o
echo "$(wc -l < symbols.txt) stubs in $here/out/libllvmstubs.a"
