#!/usr/bin/env bash
# The x86 CPU matrix: tools/cpu-matrix/check.py (a tiny ViLT in float32, bfloat16 and int8, fast path on and
# off, against the plain path) under emulated CPUs older than this one, with this machine's Python and venv:
#   Haswell  AVX2 and FMA, no AVX512 (most laptops and desktops, older AMD EPYC): no hardware bfloat16,
#            and oneDNN has no bfloat16 products at all
#   Nehalem  SSE4.2, no AVX (PyTorch's DEFAULT kernels; int8 without fbgemm)
# Correctness only: emulated time means nothing. Each CPU takes well under a minute on the CI machine.
# Usage: tools/cpu-matrix/x86.sh [PYTHON] [CPU...]   (default: .venv/bin/python, Haswell Nehalem)
# Needs qemu-user-static (Debian: apt-get install -y qemu-user-static); without it, warns and exits 0
# unless CPU_MATRIX_REQUIRED=1.
set -uo pipefail
cd "$(dirname "$0")/../.."
python=${1:-.venv/bin/python}
shift || true
cpus=("$@")
[ ${#cpus[@]} -eq 0 ] && cpus=(Haswell Nehalem)
if [ "$(uname -m)" != x86_64 ]; then
  echo "warning: this machine is $(uname -m), not x86_64: the emulated x86 CPU matrix is skipped (see arm64.sh)"
  exit 0
fi
if ! command -v qemu-x86_64-static >/dev/null 2>&1; then
  echo "warning: qemu-x86_64-static is missing (apt-get install -y qemu-user-static): the emulated CPU matrix is skipped"
  [ "${CPU_MATRIX_REQUIRED:-0}" = 1 ] && exit 1
  exit 0
fi
declare -A expect=([Haswell]=no [Nehalem]=no)
failed=0
for cpu in "${cpus[@]}"; do
  echo "-- emulated $cpu"
  SECONDS=0
  # qemu warns about each host feature its TCG cannot emulate; those lines are not ours
  qemu-x86_64-static -cpu "$cpu" "$python" tools/cpu-matrix/check.py ${expect[$cpu]:+--expect-native-bf16 ${expect[$cpu]}} \
    2> >(grep -v "TCG doesn't support requested feature" >&2)
  status=$?
  echo "-- emulated $cpu: $([ $status -eq 0 ] && echo passed || echo FAILED) in ${SECONDS} s"
  [ $status -eq 0 ] || failed=1
done
exit $failed
