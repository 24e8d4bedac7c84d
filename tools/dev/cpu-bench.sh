#!/usr/bin/env bash
# Runs the CPU decode-step JMH benchmark (src/cli/test/java/dev/calibquant/bench) on the test classpath and writes
# JMH's JSON to src/cli/target/jmh/cpu-bench.json (or $CPU_BENCH_JSON). Extra arguments go to JMH, e.g.
#   tools/dev/cpu-bench.sh -f 1 -wi 3 -i 5          (the default when none are given)
#   tools/dev/cpu-bench.sh -p batch=1,4 -prof gc
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

java_ok() { [ -x "$1/bin/java" ] && "$1/bin/java" -version 2>&1 | grep -qE 'version "(2[2-9]|[3-9][0-9])'; }
if [ -n "${JAVA_HOME:-}" ] && java_ok "$JAVA_HOME"; then :
else
  JAVA_HOME=""
  for d in /usr/lib/jvm/* "$HOME"/.jdks/* "$HOME"/.sdkman/candidates/java/*; do
    if java_ok "$d"; then JAVA_HOME="$d"; break; fi
  done
  if [ -z "$JAVA_HOME" ]; then
    echo "cpu-bench: needs a JDK 22 or newer; none found. Install one (e.g. JDK 25) and set JAVA_HOME." >&2
    exit 2
  fi
fi

export JAVA_HOME
# the library's jar and test jar are the CLI module's dependencies: install builds them first
./mvnw -q -B -ntp install -DskipTests
cli=src/cli
cp_file="$cli/target/jmh/test-classpath.txt"
mkdir -p "$cli/target/jmh"
./mvnw -q -B -ntp -pl "$cli" dependency:build-classpath -Dmdep.includeScope=test -Dmdep.outputFile="$PWD/$cp_file" >/dev/null
classpath="$cli/target/test-classes:$cli/target/classes:$(cat "$cp_file")"
json="${CPU_BENCH_JSON:-$cli/target/jmh/cpu-bench.json}"

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(-f 1 -wi 3 -i 5)
fi
exec "$JAVA_HOME/bin/java" -cp "$classpath" org.openjdk.jmh.Main 'dev.calibquant.bench.DecodeStepBenchmark' \
  -jvmArgs "--enable-native-access=ALL-UNNAMED -Xmx8g" -rf json -rff "$json" "${args[@]}"
