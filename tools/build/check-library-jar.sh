#!/usr/bin/env bash
# Checks the library artifact a service embeds (run by CI after `./mvnw install`): its jar holds a module descriptor and
# no CLI, model, selftest, benchmark or regression classes, no model weights and no native library of any kind; its
# runtime dependencies are Jackson's three jars and nothing else.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
jar="${1:-src/library/target/calibquant-0.1.0-SNAPSHOT.jar}"
[ -f "$jar" ] || { echo "check-library-jar: no $jar (run ./mvnw install first)" >&2; exit 2; }
entries="$(unzip -Z1 "$jar")"
status=0
if ! grep -qx 'module-info.class' <<<"$entries"; then
  echo "check-library-jar: $jar has no module-info.class" >&2; status=1
fi
bad="$(grep -E '^dev/calibquant/(cli|model|selftest|bench|regression|io)/|\.safetensors$|\.(so|dll|dylib|jnilib|a)$|/lib[^/]*\.so[.0-9]*$' <<<"$entries" || true)"
if [ -n "$bad" ]; then
  echo "check-library-jar: $jar holds what the library must not ship:" >&2
  head -20 <<<"$bad" >&2; status=1
fi
deps="$(./mvnw -q -B -ntp -pl src/library dependency:list -DincludeScope=runtime -DoutputFile=/dev/stdout -DexcludeTransitive=false \
        | grep -oE '[a-z0-9.-]+:[a-z0-9.-]+:jar:[^:]+:(compile|runtime)' | cut -d: -f1,2 | sort -u)"
expected=$'com.fasterxml.jackson.core:jackson-annotations\ncom.fasterxml.jackson.core:jackson-core\ncom.fasterxml.jackson.core:jackson-databind'
if [ "$deps" != "$expected" ]; then
  echo "check-library-jar: runtime dependencies are not Jackson's three jars alone:" >&2; echo "$deps" >&2; status=1
fi
[ $status -eq 0 ] && echo "check-library-jar: $jar: module dev.calibquant, $(wc -l <<<"$entries") entries, no CLI/model/native files; runtime dependencies: $(tr '\n' ' ' <<<"$deps")"
exit $status
