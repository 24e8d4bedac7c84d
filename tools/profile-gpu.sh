#!/usr/bin/env bash
# Profiles the BENCHMARKS.md decode workload with Nsight Compute on the GPU host, from a tools/gpu-bundle.sh bundle:
#   tools/profile-gpu.sh BUNDLE_DIR OUT_DIR [BATCH] [KERNEL_REGEX]
# Collects speed-of-light, memory, compute, occupancy, launch and warp-state statistics for the first 4 launches of
# the kernels matching KERNEL_REGEX (default: the decode kernels; 'quantize_pack' profiles the prefill fills the
# benchmark makes first), clocks left as they are, and writes OUT_DIR/profile.ncu-rep plus OUT_DIR/profile.txt.
set -uo pipefail
bundle="$(cd "${1:-.gpu-bundle}" && pwd)"
out="${2:-${OUT:-/tmp/profile-out}}"
batch="${3:-64}"
kernels="${4:-calibquant_decode|calibquant_minmax|fp16_decode}"
mkdir -p "$out"
work=$(mktemp -d /tmp/cq-prof.XXXX)
tar -C "$work" -xJf "$bundle/runtime.tar.xz"
ncu --clock-control none --target-processes all \
    -k "regex:$kernels" --launch-count 4 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section WarpStateStats \
    -o "$out/profile" -f \
    "$work/jre/bin/java" --enable-native-access=ALL-UNNAMED -Djava.awt.headless=true \
    -jar "$bundle/app/calibquant-cli.jar" bench --batches "$batch" --reps 1 --steps 1 > "$out/profile-run.txt" 2>&1
rc=$?
ncu --import "$out/profile.ncu-rep" --page details > "$out/profile.txt" 2>&1
echo "ncu exit $rc; report $out/profile.ncu-rep, summary $out/profile.txt"
exit $rc
