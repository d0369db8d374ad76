#!/usr/bin/env bash
# The ARM64 CPU matrix: tools/cpu-matrix/check.py under emulated ARM64 CPUs (correctness only):
#   neoverse-n1  Graviton2-like: no bfloat16 instructions (bfloat16 runs the plain way, int8 on QNNPACK)
#   v1           Graviton3-like: bfloat16 and SVE (oneDNN's bfloat16 products)
# First, once: tools/cpu-matrix/arm64-setup.sh (about 5 minutes and 4.7 GB under /tmp/arm: an aarch64
# Python 3.11 with torch 2.13 and vilt's dependencies, plus /proc/cpuinfo overlays, since qemu passes the
# host's x86 one through). Too heavy for CI; run it by hand. Usage: tools/cpu-matrix/arm64.sh [n1|v1...]
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x /tmp/arm/sysroot/usr/bin/python3.11 ]; then
  echo "the aarch64 Python is missing: run tools/cpu-matrix/arm64-setup.sh first" >&2
  exit 2
fi
cpus=("$@")
[ ${#cpus[@]} -eq 0 ] && cpus=(n1 v1)
failed=0
for cpu in "${cpus[@]}"; do
  case $cpu in
    n1) qemu_cpu=neoverse-n1 expect=no ;;
    v1) qemu_cpu=max,sve-default-vector-length=32,sme=off expect=yes ;;
    *) echo "unknown CPU $cpu: use n1 or v1" >&2; exit 2 ;;
  esac
  echo "-- emulated ARM64 $cpu ($qemu_cpu)"
  SECONDS=0
  QEMU_CPU=$qemu_cpu SYSROOT=/tmp/arm/sysroot-$cpu PROJECT=. tools/cpu-matrix/arm64-run.sh \
    tools/cpu-matrix/check.py --expect-native-bf16 $expect
  status=$?
  echo "-- emulated ARM64 $cpu: $([ $status -eq 0 ] && echo passed || echo FAILED) in ${SECONDS} s"
  [ $status -eq 0 ] || failed=1
done
exit $failed
