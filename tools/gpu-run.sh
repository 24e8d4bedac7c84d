#!/usr/bin/env bash
# Runs on the GPU host (no JDK there) from a bundle made by tools/gpu-bundle.sh:
#   tools/gpu-run.sh [BUNDLE_DIR] [OUT_DIR]
# unpacks the runtime, runs `calibquant info` and `selftest`, then every test (GPU tests included) with the JUnit
# console launcher and XML reports, and packs logs and reports into OUT_DIR/gpu-run.tar.gz.
set -uo pipefail
bundle="$(cd "${1:-.gpu-bundle}" && pwd)"
out="${2:-${OUT:-/tmp/gpu-run-out}}"
mkdir -p "$out" /tmp/cq-work
work=/tmp/cq-work
tar -C "$work" -xJf "$bundle/runtime.tar.xz"
java="$work/jre/bin/java"
app="$bundle/app"
cp_test="$app/test-classes:$app/classes:$(ls "$app"/lib/*.jar | tr '\n' ':')"
logs="$work/logs"; mkdir -p "$logs"

"$java" -version 2>&1 | tee "$logs/java-version.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$logs/nvidia-smi.txt"

status=0
"$java" --enable-native-access=ALL-UNNAMED -jar "$app/calibquant-cli.jar" info 2>&1 | tee "$logs/info.txt" || status=1
"$java" --enable-native-access=ALL-UNNAMED -jar "$app/calibquant-cli.jar" selftest 2>&1 | tee "$logs/selftest.txt" || status=1

"$java" --enable-native-access=ALL-UNNAMED -Xmx16g -jar "$app"/junit-platform-console-standalone-*.jar execute \
    --class-path "$cp_test" --scan-class-path "$app/test-classes" \
    --include-classname '.*(Test|Tests|Properties)$' \
    --reports-dir "$logs/junit" --details=summary --details-theme=ascii --disable-banner 2>&1 | tee "$logs/junit.txt" \
    || status=1

for extra in "${@:3}"; do
  echo "+ $extra" | tee -a "$logs/extra.txt"
  (cd "$app" && JAVA="$java" CP="$cp_test" bash -c "$extra") 2>&1 | tee -a "$logs/extra.txt" || status=1
done

tar -C "$work" -czf "$out/gpu-run.tar.gz" logs
echo "gpu-run: status $status; reports in $out/gpu-run.tar.gz"
exit $status
