#!/usr/bin/env bash
# `make test-python`: the pytest suite as two groups run at the same time, each in its own pytest process with its
# own Redis, SQS endpoint, PostgreSQL and temporary directory. Most tests wait on child processes, servers and
# timeouts rather than on the CPU, so two at once take little more than half the time of one after the other.
# Group A prints as it goes; group B's output follows when both are done. Either failing fails the run.
# `.venv/bin/pytest` alone still runs the whole suite in one process.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"

group_a=(tests/manager tests/fuzz tests/bench tests/core tests/postback tests/security tests/support)
group_b=(tests/worker tests/tracker tests/browser tests/deploy tests/e2e tests/faults tests/test_*.py)

# Every test directory and top-level test module is in exactly one group: a new one must be placed.
all="$(ls -d tests/*/ tests/test_*.py | sed 's#/$##' | grep -v -x -E "tests/__pycache__" | sort)"
grouped="$(printf '%s\n' "${group_a[@]}" "${group_b[@]}" | sort)"
if [ "$all" != "$grouped" ]; then
    echo "scripts/test-python.sh: the test groups do not match tests/ exactly:" >&2
    diff <(echo "$all") <(echo "$grouped") >&2
    exit 2
fi

# Test modules are imported by basename (tests/ has no packages): two of one name break a run that collects both.
same_name="$(find tests -name 'test_*.py' -not -path '*/__pycache__/*' -printf '%f\n' | sort | uniq -d)"
if [ -n "$same_name" ]; then
    echo "scripts/test-python.sh: test modules that share a name (rename one): $same_name" >&2
    exit 2
fi

# Each group collects `tests` minus the other group, so directory conftests load as in a whole-suite run. Tests share
# code through tests/support, never by importing a conftest by name (which breaks when several are loaded up front).
ignore_a=() ignore_b=()
for path in "${group_b[@]}"; do ignore_a+=("--ignore=$path"); done
for path in "${group_a[@]}"; do ignore_b+=("--ignore=$path"); done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/adclick-pytest-XXXXXX")"
log_b="$tmp/group-b.log"
"$BIN/pytest" -p no:cacheprovider --basetemp="$tmp/b" "$@" "${ignore_b[@]}" tests >"$log_b" 2>&1 &
pid_b=$!
trap 'kill -TERM "$pid_b" 2>/dev/null; wait "$pid_b" 2>/dev/null; exit 130' INT TERM

echo "== group A: ${group_a[*]} (group B runs beside it, its output follows)"
"$BIN/pytest" -p no:cacheprovider --basetemp="$tmp/a" "$@" "${ignore_a[@]}" tests
status_a=$?
wait "$pid_b"
status_b=$?
trap - INT TERM

echo
echo "== group B: ${group_b[*]}"
cat "$log_b"
echo
echo "== pytest: group A exit ${status_a}, group B exit ${status_b}"
if [ "$status_a" -eq 0 ] && [ "$status_b" -eq 0 ]; then
    rm -rf "$tmp"
    exit 0
fi
echo "temporary files kept in $tmp" >&2
exit 1
