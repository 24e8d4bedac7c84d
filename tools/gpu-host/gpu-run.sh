#!/usr/bin/env bash
# Runs on the GPU host (no JDK there) from a bundle made by tools/gpu-host/gpu-bundle.sh:
#   tools/gpu-host/gpu-run.sh BUNDLE_DIR OUT_DIR [--bench] [--sanitize] [--sanitize-junit] [--regression]
#                    [--regression-record] [--profile] [--only-extras]
# Unpacks the runtime; runs `calibquant info` and `selftest`, then every test (GPU tests included) with the JUnit
# console launcher and XML reports. --bench adds `calibquant bench` with PyTorch SDPA measured in the same run
# (tools/gpu-host/bench_sdpa.py, where torch is installed), then `calibquant bench --budget-gb ${BUDGET_GB:-100}` (decode
# throughput at a fixed KV budget: logs/bench-budget.txt and .csv). --sanitize runs `selftest` under
# compute-sanitizer memcheck and racecheck. --sanitize-junit runs every GPU-tagged JUnit test (the soak and the
# device stress test at a sanitizer's size) under compute-sanitizer memcheck, racecheck and synccheck, the three at once
# (${SANITIZE_SECONDS:-150} s each at most; logs/sanitizer-junit-summary.txt; SANITIZE_TOOLS and SANITIZE_CLASSES
# choose fewer tools or test classes, to split the suite over several calls). --regression runs the kernel regression suite against the expectations
# shipped in the jar on both PTX targets (JUnit XML in logs/regression-*.xml). --regression-record records them first
# into logs/expectations.json (copy it to ptx/regression/expectations.json and commit it), then checks both targets
# against that file.
# DEADLINE_S=N packs the logs at N seconds and skips optional steps that would not fit before it (see fits below).
# --junit-only runs only the JUnit step (with GPU_TESTS_ONLY=1, only the GPU-tagged tests).
# --profile runs tools/gpu-host/profile-gpu.sh on the docs/benchmarks.md step at B = 64 (decode steps) and B = 1 (quantize at
# prefill) into logs/profile-*/. --only-extras skips info, selftest, the JUnit run and the demo. Logs, reports and
# results are packed into OUT_DIR/gpu-run.tar.gz; the exit status is non-zero if anything failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$(cd "${1:-.gpu-bundle}" && pwd)"
out="${2:-${OUT:-/tmp/gpu-run-out}}"
shift 2 || true
bench=0; sanitize=0; sanitize_junit=0; regression=0; record=0; profile=0; extras_only=0; junit_only=0
for a in "$@"; do
  case "$a" in
    --bench) bench=1 ;; --sanitize) sanitize=1 ;; --sanitize-junit) sanitize_junit=1 ;; --regression) regression=1 ;;
    --regression-record) record=1; regression=1 ;; --profile) profile=1 ;; --only-extras) extras_only=1 ;;
    --junit-only) junit_only=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
work=$(mktemp -d /tmp/cq-work.XXXX)
tar -C "$work" -xJf "$bundle/runtime.tar.xz"
java="$work/jre/bin/java"
app="$bundle/app"
jar="$app/calibquant-cli.jar"
# the bundle's jar leaves out the PTX and the model weights (the device call carries at most 64 MiB with the
# working tree, which has them): they come from the checkout the bundle sits in, on the class path
repo="$(cd "$bundle/.." && pwd)"
res="$work/resources"; mkdir -p "$res/dev/calibquant"; ln -s "$repo/ptx" "$res/dev/calibquant/ptx"
cp_main="$jar:$res:$repo/src/cli/main/resources"
jflags=(--enable-native-access=ALL-UNNAMED -Djava.awt.headless=true)
cq=("$java" "${jflags[@]}" -Xmx24g -cp "$cp_main" dev.calibquant.cli.CalibQuantCli)
cp_test="$app/test-classes:$cp_main:$(ls "$app"/lib/*.jar | tr '\n' ':')"
logs="$work/logs"; mkdir -p "$logs"
status=0
step() { echo "=== $* ($(date -u +%H:%M:%S))"; }
# DEADLINE_S=N (seconds from the start): the logs so far are packed at N even if the call is killed right after, and
# a step expected to take longer than the time left is skipped with a line saying so (core steps always run)
fits() {
  [ -z "${DEADLINE_S:-}" ] && return 0
  if [ $((SECONDS + $1)) -lt "$DEADLINE_S" ]; then return 0; fi
  echo "=== SKIPPED (DEADLINE_S=$DEADLINE_S, ${SECONDS} s gone, ~$1 s needed): $2"; return 1
}
if [ -n "${DEADLINE_S:-}" ]; then
  (sleep "$DEADLINE_S"; tar -C "$work" -czf "$out/gpu-run.tar.gz" logs) > /dev/null 2>&1 &
  watchdog=$!
fi

step env
{ "$java" -version; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } 2>&1 | tee "$logs/env.txt"

step info
"${cq[@]}" info 2>&1 | tee "$logs/info.txt" || status=1
if [ "$extras_only" = 0 ]; then
if [ "$junit_only" = 0 ]; then
step selftest
"${cq[@]}" selftest 2>&1 | tee "$logs/selftest.txt" || status=1
if fits 45 "selftest sm_80"; then
step selftest sm_80
"${cq[@]}" selftest --target sm_80 2>&1 | tee "$logs/selftest-sm80.txt" || status=1
fi
if [ -z "${SKIP_PTX:-}" ] && fits 45 "selftest from PTX"; then  # SKIP_PTX=1 leaves out the driver-JIT selftest (40 s) when device time is short
step "selftest sm_90a from PTX (driver JIT, the path of GPUs without a shipped cubin)"
"${cq[@]}" selftest --ptx 2>&1 | tee "$logs/selftest-ptx.txt" || status=1
fi

fi
step "junit${GPU_TESTS_ONLY:+ (GPU-tagged tests only)}"
tag_opt=(); [ -n "${GPU_TESTS_ONLY:-}" ] && tag_opt=(--include-tag gpu)
select=(--scan-class-path "$app/test-classes")  # JUNIT_CLASSES=a.B,c.D runs only those classes
[ -n "${JUNIT_CLASSES:-}" ] && select=($(printf -- '--select-class %s ' ${JUNIT_CLASSES//,/ }))
"$java" "${jflags[@]}" -Xmx24g -jar "$app"/junit-platform-console-standalone-*.jar execute "${tag_opt[@]}" \
    --class-path "$cp_test" "${select[@]}" \
    --include-classname '.*(Test|Tests|Properties)$' --exclude-package dev.calibquant.fuzz \
    --reports-dir "$logs/junit" --details=tree --details-theme=ascii --disable-banner > "$logs/junit.txt" 2>&1 \
    || status=1
grep -E "tests (successful|failed|skipped|aborted)|calibquant\]" "$logs/junit.txt" | tail -60
grep -B2 -A12 "\[X\]" "$logs/junit.txt" | head -150

if [ "$junit_only" = 0 ]; then
fits 20 "demo" && {
step "demo on the GPU"
(cd "$work" && "${cq[@]}" demo --gpu --images 20 --no-progress --no-png) 2>&1 \
    | tee "$logs/demo.txt" || status=1
}
if [ -d "$app/example-classes" ] && fits 15 "the embedding example"; then
  step "the embedding example (examples/embedding) on the GPU"
  "$java" "${jflags[@]}" -cp "$app/example-classes:$cp_main" dev.calibquant.examples.EmbeddingExample 2>&1 \
      | tee "$logs/example.txt" || status=1
fi
fi
fi

if [ "$regression" = 1 ]; then
  expect_opt=()
  if [ "$record" = 1 ]; then
    step "regression: record both PTX targets into logs/expectations.json"
    "${cq[@]}" selftest --regression --record "$logs/expectations.json" \
        --junit-xml "$logs/regression-record.xml" 2>&1 | tee "$logs/regression-record.txt" || status=1
    expect_opt=(--expectations "$logs/expectations.json")
  fi
  for t in sm_90a sm_80; do
    fits 60 "regression $t" || continue
    step "regression: $t${expect_opt:+ against the new recording}"
    "${cq[@]}" selftest --regression --target "$t" "${expect_opt[@]}" \
        --junit-xml "$logs/regression-$t.xml" 2>&1 | tee "$logs/regression-$t.txt" || status=1
  done
fi

if [ "$profile" = 1 ]; then
  step "profile: decode steps at B = 64 (ncu, NVTX filter calibquant@decode_step/)"
  bash "$here/profile-gpu.sh" "$bundle" "$logs/profile-decode-b64" --workload bench --batch 64 \
      --filter "calibquant@decode_step/" || status=1
  step "profile: quantize at prefill, B = 1 (NVTX filter calibquant@prefill/)"
  bash "$here/profile-gpu.sh" "$bundle" "$logs/profile-prefill-b1" --workload bench --batch 1 \
      --filter "calibquant@prefill/" --launch-count 2 || status=1
fi

if [ "$bench" = 1 ]; then
  step sdpa
  # NO_SDPA=1 leaves out the same-run SDPA (the table then shows the recorded SDPA anchors) when device time is short
  if [ -z "${NO_SDPA:-}" ] && fits 90 "SDPA" && python3 -c 'import torch' 2>/dev/null; then
    PYTHONUNBUFFERED=1 python3 "$here/bench_sdpa.py" ${BENCH_BATCHES:+--batches "$BENCH_BATCHES"} --out "$logs/sdpa.json" 2>&1 | tee "$logs/sdpa.txt" || status=1
  fi
  fits "${BENCH_SECONDS:-200}" "bench" && {  # BENCH_SECONDS: its estimate, for fewer batch sizes
  step bench
  sdpa_opt=(); [ -f "$logs/sdpa.json" ] && sdpa_opt=(--sdpa "$logs/sdpa.json")
  "${cq[@]}" bench "${sdpa_opt[@]}" ${BENCH_BATCHES:+--batches "$BENCH_BATCHES"} --csv "$logs/bench.csv" 2>&1 \
      | tee "$logs/bench.txt" || status=1
  }
  # BENCH_BATCHES=1,64,256 times only those batch sizes; NO_BUDGET=1 leaves out the fixed-budget bench
  [ -n "${NO_BUDGET:-}" ] || ! fits 120 "bench at a fixed budget" || {
  step "bench at a fixed KV budget (${BUDGET_GB:-100} GB, all 32 layers, 256 generated tokens reserved)"
  "${cq[@]}" bench --budget-gb "${BUDGET_GB:-100}" --csv "$logs/bench-budget.csv" 2>&1 \
      | tee "$logs/bench-budget.txt" || status=1
  }
fi

if [ "$sanitize" = 1 ]; then
  tar -C "$work" -czf "$out/gpu-run.tar.gz" logs   # in case the sanitizers outlive the call
  for tool in memcheck racecheck; do
    fits "${SANITIZE_SECONDS:-150}" "compute-sanitizer $tool" || continue
    step "compute-sanitizer $tool (at most ${SANITIZE_SECONDS:-150} s)"
    timeout "${SANITIZE_SECONDS:-150}" compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
        "${cq[@]}" selftest > "$logs/sanitizer-$tool.txt" 2>&1
    rc=$?
    echo "compute-sanitizer $tool: exit $rc (124 = stopped at the time limit)" | tee -a "$logs/sanitizer-$tool.txt"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status=1
    grep -E "ERROR SUMMARY|PASS|FAIL" "$logs/sanitizer-$tool.txt" | tail -45
  done
fi

if [ "$sanitize_junit" = 1 ]; then
  # The three tools run at once on the one GPU (each its own process and context; SANITIZE_SERIAL=1 runs them one after
  # the other), over every GPU-tagged test, the soak and the device stress test included at a sanitizer's size
  # (SANITIZE_SOAK_STEPS, SANITIZE_STRESS_OPERATIONS). Tests print as they finish, so a run stopped at its time limit
  # still says which tests ran clean; logs/sanitizer-junit-summary.txt has one line per tool.
  fits "${SANITIZE_SECONDS:-150}" "compute-sanitizer over the GPU tests" && {
  step "compute-sanitizer memcheck, racecheck, synccheck over the GPU JUnit tests (at most ${SANITIZE_SECONDS:-150} s each)"
  tar -C "$work" -czf "$out/gpu-run.tar.gz" logs   # in case the sanitizers outlive the call
  pids=()
  tools=${SANITIZE_TOOLS:-memcheck,racecheck,synccheck}  # SANITIZE_TOOLS=racecheck runs only that one
  sselect=(--scan-class-path "$app/test-classes")  # SANITIZE_CLASSES=a.B,c.D: only those (a suite split over calls)
  [ -n "${SANITIZE_CLASSES:-}" ] && sselect=($(printf -- '--select-class %s ' ${SANITIZE_CLASSES//,/ }))
  for tool in ${tools//,/ }; do
    ( timeout "${SANITIZE_SECONDS:-150}" compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
        "$java" "${jflags[@]}" -Xmx8g -Dcalibquant.soak.steps="${SANITIZE_SOAK_STEPS:-300}" \
        -Dcalibquant.stress.operations="${SANITIZE_STRESS_OPERATIONS:-2000}" \
        -jar "$app"/junit-platform-console-standalone-*.jar execute --include-tag gpu \
        --class-path "$cp_test" "${sselect[@]}" \
        --include-classname '.*(Test|Tests|Properties)$' --exclude-package dev.calibquant.fuzz \
        --details=flat --disable-ansi-colors --disable-banner \
        > "$logs/sanitizer-junit-$tool.txt" 2>&1
      echo "exit $?" >> "$logs/sanitizer-junit-$tool.txt" ) &
    pids+=($!)
    [ -n "${SANITIZE_SERIAL:-}" ] && wait "${pids[-1]}"
  done
  wait "${pids[@]}"
  for tool in ${tools//,/ }; do
    bash "$here/sanitizer-summary.sh" "$tool" "$logs/sanitizer-junit-$tool.txt" | tee -a "$logs/sanitizer-junit-summary.txt" \
        || status=1
  done
  }
fi

[ -n "${watchdog:-}" ] && { pkill -P "$watchdog" 2>/dev/null; kill "$watchdog" 2>/dev/null; }
tar -C "$work" -czf "$out/gpu-run.tar.gz" logs
step "done: status $status; results in $out/gpu-run.tar.gz"
exit $status
