#!/usr/bin/env bash
# One line for a compute-sanitizer log of a JUnit console run in flat mode (gpu-run.sh --sanitize-junit): the tool,
# how the run ended, how many errors the sanitizer reported, and the test classes that finished (a class with a failed
# test is marked FAILED). A run stopped at its time limit covers only the classes listed. Exit status 1 if the
# sanitizer reported an error or a test failed.
#   tools/gpu-host/sanitizer-summary.sh TOOL LOG
set -u
tool=$1; log=$2
rc=$(sed -n 's/^exit \([0-9]*\)$/\1/p' "$log" | tail -1)
case "${rc:-?}" in
  0) ended="finished" ;; 124) ended="stopped at its time limit" ;; 99) ended="finished with sanitizer errors" ;;
  1) ended="finished with failed tests" ;; *) ended="exit ${rc:-unknown}" ;;
esac
# error records start "========= " and a capital letter; backtrace lines are indented; banner and summary are no errors
errors=$(grep -E '^========= [A-Z]' "$log" | grep -cvE '^========= (COMPUTE-SANITIZER|ERROR SUMMARY)')
summary=$(grep -oE 'ERROR SUMMARY: [0-9]+ errors?' "$log" | tail -1)
# flat mode: "Finished:    Name ([engine:…]/[class:a.b.Name]…)", followed by "=> Exception: …" when it failed
classes=$(awk '
  /^Finished: / { last = ""; if (match($0, /\[class:[^]]*\]\)$/)) { c = substr($0, RSTART + 7, RLENGTH - 9); sub(/.*\./, "", c); done[c] = 1; order[++n] = c }
                  else if (match($0, /\[class:[^]]*\]/)) { last = substr($0, RSTART + 7, RLENGTH - 8); sub(/.*\./, "", last) } next }
  /^[[:space:]]+=> Exception:/ && last != "" && $0 !~ /TestAbortedException/ { failed[last] = 1 }
  END { for (i = 1; i <= n; i++) printf "%s%s ", order[i], (order[i] in failed ? "(FAILED)" : "") }' "$log")
failed=$(echo "$classes" | grep -c 'FAILED')
count=$(echo "$classes" | wc -w)
echo "compute-sanitizer $tool: $ended; $errors error records${summary:+ ($summary)}; $count test classes finished: ${classes% }"
[ "$errors" -eq 0 ] && [ "$failed" -eq 0 ] && { [ "${rc:-0}" = 0 ] || [ "${rc:-0}" = 124 ]; }
