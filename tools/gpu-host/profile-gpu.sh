#!/usr/bin/env bash
# Profiles CalibQuant's kernels with Nsight Compute on the GPU host, from a tools/gpu-host/gpu-bundle.sh bundle:
#   tools/gpu-host/profile-gpu.sh BUNDLE OUT [--workload bench|demo] [--batch 64] [--filter NVTX_FILTER]
#                        [--launch-count N] [--images N]
# Runs the workload with NVTX ranges on and, under `ncu --clock-control none --nvtx --nvtx-include FILTER`,
# collects the SpeedOfLight, MemoryWorkloadAnalysis, Occupancy and LaunchStats sections (plus the summary's metrics)
# for the kernels inside the filter. Writes, under OUT:
#   profile.ncu-rep      the report (open it in Nsight Compute)
#   profile-run.txt      what the workload and ncu printed; profile-info.txt: the GPU, and whether NVTX ranges were on
#   profile-raw.csv      ncu --import ... --csv --page raw (kernels named by their NVTX variant range where ncu can)
#   profile-summary.csv, profile-summary.md   per launch: duration, DRAM bytes and GB/s, % of peak DRAM, SM
#                        throughput, achieved/theoretical occupancy, registers/thread, shared memory/block
# Workloads: bench = `calibquant bench --batches BATCH --reps 1 --steps 1` (the docs/benchmarks.md step, default B 64);
# demo = `calibquant demo --gpu --images N` (the built-in model; default 2 images, first 12 launches).
# Filters (push/pop ranges of the NVTX domain "calibquant"; a trailing '/' marks a push/pop range):
#   calibquant@decode_step/                               every kernel of every decode step (the default)
#   calibquant@decode_step/*/calibquant_decode_b1_d128_mm2  one variant inside decode steps
#   calibquant@prefill/                                   quantize_pack at the end of prefill
#   calibquant@fp16_decode_d128/                          every launch of one variant, wherever it runs
#   none                                                  no NVTX filter: every kernel (use --launch-count)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$(cd "${1:?usage: profile-gpu.sh BUNDLE OUT [options]}" && pwd)"
out="${2:?usage: profile-gpu.sh BUNDLE OUT [options]}"
shift 2
workload=bench; batch=64; filter="calibquant@decode_step/"; launch_count=""; images=2; kernel_opt=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workload) workload="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --filter) filter="$2"; shift 2 ;;
    --launch-count) launch_count="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    *) echo "profile-gpu: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$workload" in
  bench) app=(bench --batches "$batch" --reps 1 --steps 1) ;;
  demo) app=(demo --gpu --images "$images" --no-progress --no-png); launch_count="${launch_count:-12}" ;;
  *) echo "profile-gpu: --workload is bench or demo, not $workload" >&2; exit 2 ;;
esac
command -v ncu >/dev/null || { echo "profile-gpu: ncu (Nsight Compute) is not on the PATH" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d /tmp/cq-prof.XXXX)
tar -C "$work" -xJf "$bundle/runtime.tar.xz"
java="$work/jre/bin/java"
jar="$bundle/app/calibquant-cli.jar"
# as in gpu-run.sh: the bundle's jar leaves out the PTX and the model weights, the checkout around it has them
repo="$(cd "$bundle/.." && pwd)"
res="$work/resources"; mkdir -p "$res/dev/calibquant"; ln -sfn "$repo/ptx" "$res/dev/calibquant/ptx"
cp_main="$jar:$res:$repo/src/cli/main/resources"

# The NVTX ranges need the CUDA toolkit's libnvtx3interop.so.1; without it they are no-ops and a filter matches nothing.
nvtx_lib="${CALIBQUANT_NVTX_LIBRARY:-}"
if [ -z "$nvtx_lib" ]; then
  for c in "${CUDA_HOME:-/nonexistent}/lib64" "${CUDA_PATH:-/nonexistent}/lib64" /usr/local/cuda/lib64 \
           /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    [ -f "$c/libnvtx3interop.so.1" ] && { nvtx_lib="$c/libnvtx3interop.so.1"; break; }
  done
fi
if [ -z "$nvtx_lib" ]; then
  nvtx_lib=$(timeout 60 find /usr/local /opt /usr/lib -name libnvtx3interop.so.1 2>/dev/null | head -1)
fi
jflags=(--enable-native-access=ALL-UNNAMED -Djava.awt.headless=true -Dcalibquant.nvtx=true)
if [ -n "$nvtx_lib" ]; then
  jflags+=("-Dcalibquant.nvtx.library=$nvtx_lib")
  echo "profile-gpu: NVTX library $nvtx_lib"
elif [ "$filter" != none ]; then
  echo "profile-gpu: libnvtx3interop.so.1 not found: NVTX ranges are off, so profiling by kernel name instead" >&2
  filter=none
  kernel_opt=(-k "regex:calibquant_decode|calibquant_minmax|fp16_decode")
  launch_count="${launch_count:-8}"
fi

nvtx_opt=(--nvtx)
[ "$filter" != none ] && nvtx_opt+=(--nvtx-include "$filter")
count_opt=(); [ -n "$launch_count" ] && count_opt=(--launch-count "$launch_count")
metrics=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import ncu_summary; print(",".join(ncu_summary.METRICS))' "$here" 2>/dev/null \
  || echo "gpu__time_duration.sum,dram__bytes.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,sm__maximum_warps_per_active_cycle_pct,launch__registers_per_thread,launch__shared_mem_per_block_static,launch__shared_mem_per_block_dynamic,launch__grid_size,launch__block_size")

"$java" "${jflags[@]}" -cp "$cp_main" dev.calibquant.cli.CalibQuantCli info 2>&1 | grep -E "NVTX|GPU " | tee "$out/profile-info.txt"
echo "profile-gpu: ${app[*]} under ncu, NVTX filter: $filter${launch_count:+, at most $launch_count launches}"
(cd "$work" && ncu --clock-control none --target-processes all "${nvtx_opt[@]}" "${kernel_opt[@]}" "${count_opt[@]}" \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --metrics "$metrics" -o "$out/profile" -f \
    "$java" "${jflags[@]}" -cp "$cp_main" dev.calibquant.cli.CalibQuantCli "${app[@]}") > "$out/profile-run.txt" 2>&1
rc=$?
grep -E "==PROF==|==ERROR==|No kernels" "$out/profile-run.txt" | tail -5
if [ ! -f "$out/profile.ncu-rep" ]; then
  echo "profile-gpu: ncu wrote no report (exit $rc); see $out/profile-run.txt" >&2
  exit 1
fi
import_opt=(--import "$out/profile.ncu-rep" --csv --page raw --print-units base --metrics "$metrics")
ncu "${import_opt[@]}" --print-nvtx-rename kernel > "$out/profile-raw.csv" 2> "$out/profile-import.txt" \
  || ncu "${import_opt[@]}" > "$out/profile-raw.csv" 2>> "$out/profile-import.txt"
ncu --import "$out/profile.ncu-rep" --page details > "$out/profile.txt" 2>&1
if command -v python3 >/dev/null; then
  python3 "$here/ncu_summary.py" "$out/profile-raw.csv" --csv "$out/profile-summary.csv" --md "$out/profile-summary.md" \
    --title "Nsight Compute: calibquant ${app[*]}, NVTX filter $filter" || rc=1
  cat "$out/profile-summary.md"
else
  echo "profile-gpu: no python3 here: run tools/gpu-host/ncu_summary.py on $out/profile-raw.csv elsewhere" >&2
fi
rm -rf "$work"
echo "profile-gpu: ncu exit $rc; report $out/profile.ncu-rep, summary $out/profile-summary.md"
exit $rc
