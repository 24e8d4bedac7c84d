#!/usr/bin/env bash
# Packs everything the GPU host needs to run this project's Java code, into the git-ignored .gpu-bundle/:
#   runtime.tar.xz   a jlink'ed JDK runtime (the GPU host has no Java),
#   app/             the main and test classes, the runnable jar, every dependency jar, the JUnit console launcher.
# Then `tools/gpu-host/gpu-run.sh` runs there. The device tool carries .gpu-bundle (keep it well under 64 MiB).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="$root/.gpu-bundle"
console_version="${JUNIT_CONSOLE_VERSION:-1.14.1}"

java_ok() { [ -x "$1/bin/jlink" ] && "$1/bin/java" -version 2>&1 | grep -qE 'version "(2[2-9]|[3-9][0-9])'; }
if [ -z "${JAVA_HOME:-}" ] || ! java_ok "$JAVA_HOME"; then
  for d in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/*; do java_ok "$d" && { export JAVA_HOME="$d"; break; }; done
fi
java_ok "${JAVA_HOME:-/nonexistent}" || { echo "gpu-bundle: needs a JDK 22+ with jlink; set JAVA_HOME" >&2; exit 2; }

rm -rf "$out"; mkdir -p "$out/app/lib"
export JAVA_HOME
./mvnw -q -B -ntp -DskipTests install   # the CLI module resolves the library's jar and test jar from the install
# test-only jars: the main ones are inside the runnable jar, and JMH is not needed there
# (the device call carries at most 64 MiB with the working tree; byte-buddy only serves AssertJ's soft assertions;
# the JUnit console launcher below already holds the Jupiter and Platform jars)
./mvnw -q -B -ntp -pl src/cli dependency:copy-dependencies -DincludeScope=test -DoutputDirectory="$out/app/lib" \
    -DexcludeGroupIds=dev.calibquant -DexcludeArtifactIds=jazzer,jazzer-api,jazzer-junit,jmh-core,jmh-generator-annprocess,commons-math3,jopt-simple,byte-buddy,picocli,jackson-databind,jackson-core,jackson-annotations,jfreechart,progressbar,jline-terminal,jline-native,junit-jupiter,junit-jupiter-api,junit-jupiter-engine,junit-jupiter-params,junit-platform-commons,junit-platform-engine,junit-platform-launcher,opentest4j,apiguardian-api
./mvnw -q -B -ntp -N dependency:copy -Dartifact="org.junit.platform:junit-platform-console-standalone:$console_version" \
    -DoutputDirectory="$out/app"
# the runnable jar carries the main classes and resources: no separate classes/ (the device tree limit is 64 MiB)
# both modules' test classes in one folder (the packages do not collide)
mkdir -p "$out/app/test-classes"
cp -r src/library/target/test-classes/. src/cli/target/test-classes/. "$out/app/test-classes"
cp src/cli/target/calibquant-cli.jar "$out/app/"
# the PTX and the model weights travel in the working tree anyway: gpu-run.sh puts them on the class path
zip -q -d "$out/app/calibquant-cli.jar" 'dev/calibquant/ptx/*' 'dev/calibquant/model/*.safetensors' > /dev/null
# the embedding example, compiled against the installed library (gpu-run.sh runs it on the GPU)
./mvnw -q -B -ntp -f examples/embedding/pom.xml compile
cp -r examples/embedding/target/classes "$out/app/example-classes"
cp tools/gpu-host/gpu-run.sh tools/gpu-host/bench_sdpa.py tools/gpu-host/profile-gpu.sh tools/gpu-host/ncu_summary.py \
    tools/gpu-host/sanitizer-summary.sh "$out/"

rm -rf "$out/jre"
"$JAVA_HOME/bin/jlink" --add-modules java.base,java.desktop,java.logging,java.management,java.xml,jdk.unsupported,jdk.incubator.vector,jdk.management \
    --strip-debug --no-header-files --no-man-pages --output "$out/jre"
tar -C "$out" -cJf "$out/runtime.tar.xz" jre
rm -rf "$out/jre"
du -sh "$out" "$out/runtime.tar.xz" "$out/app"
