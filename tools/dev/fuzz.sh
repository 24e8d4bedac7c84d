#!/usr/bin/env bash
# Fuzzes the CLI's file readers with Jazzer (coverage-guided, libFuzzer underneath): every @FuzzTest of
# src/cli/test/java/dev/calibquant/fuzz for its maxDuration (30 s each), or FUZZ_SECONDS each, e.g.
#   FUZZ_SECONDS=600 tools/dev/fuzz.sh
# (Jazzer's JUnit integration takes libFuzzer flags from the configuration parameters jazzer.internal.arg.N, which
# JUnit also reads from system properties; a flag given there comes after the annotation's and wins). The corpus it grows stays in the git-ignored .cifuzz-corpus/; a finding fails the test and is written to the
# checkout's root as crash-<hash>: fix the code, then move the file beside the committed seed inputs
# (src/cli/test/resources/dev/calibquant/fuzz/<Test>Inputs/<method>/), where every later build replays it.
# Without JAZZER_FUZZ, `./mvnw verify` replays the committed inputs only (regression mode).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
if [ -z "${JAVA_HOME:-}" ]; then
  for d in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/*; do
    if [ -x "$d/bin/java" ] && "$d/bin/java" -version 2>&1 | grep -qE 'version "(2[2-9]|[3-9][0-9])'; then
      export JAVA_HOME="$d"; break
    fi
  done
fi
./mvnw -q -B -ntp install -DskipTests
# Jazzer fuzzes one @FuzzTest per JVM: one run per target
status=0
for target in SafetensorsReaderFuzzTest#readsOrRefusesWithItsOwnException \
    CliInputFuzzTest#regressionExpectationsReadOrRefuseByName CliInputFuzzTest#benchFromCsvPrintsTheTableOrOneLine \
    CliInputFuzzTest#evalReadsACaptureOrRefusesInOneLine CliInputFuzzTest#modelWeightsLoadOrRefuseByName \
    CliInputFuzzTest#kernelManifestParsesOrRefusesByName; do
  echo "== $target"
  JAZZER_FUZZ=1 ./mvnw -B -ntp -o -pl src/cli test-compile surefire:test@fuzz-regression -Dtest="dev.calibquant.fuzz.$target" \
      -Dsurefire.failIfNoSpecifiedTests=false \
      ${FUZZ_SECONDS:+"-Dtest.jvm.extra=-Djazzer.internal.arg.0=jazzer -Djazzer.internal.arg.1=-max_total_time=$FUZZ_SECONDS"} "$@" > "src/cli/target/fuzz-${target#*#}.log" 2>&1 || status=1
  grep -E "^#[0-9]+ +DONE|Done [0-9]+ runs|Tests run:|FuzzTestFindingException" "src/cli/target/fuzz-${target#*#}.log" | head -4
done
exit $status
