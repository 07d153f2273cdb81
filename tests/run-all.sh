#!/usr/bin/env bash
# The project's test command (README; .ci/run execs it).
set -uo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[test]' || exit 1

python3 -m pytest -q -ra tests
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-all.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
