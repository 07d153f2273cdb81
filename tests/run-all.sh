#!/usr/bin/env bash
# The project's test command (README; .ci/run execs it): installs what the tests need, then
# lint, types and the whole pytest suite. Tests that need network, root or QEMU skip with a
# reason when those are missing; as root with apt available, the system packages they need
# are installed here so that they run.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    need=""
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
    command -v qemu-system-aarch64 >/dev/null 2>&1 || need="$need qemu-system-arm"
    command -v dpkg-deb >/dev/null 2>&1 || need="$need dpkg"
    command -v xz >/dev/null 2>&1 || need="$need xz-utils"
    command -v zstd >/dev/null 2>&1 || need="$need zstd"
    command -v dot >/dev/null 2>&1 || need="$need graphviz"
    # the host's kmod: test_trie reads indexes back with its modprobe
    command -v modprobe >/dev/null 2>&1 || [ -x /usr/sbin/modprobe ] || need="$need kmod"
    if [ -n "$need" ]; then
        echo "run-all.sh: installing$need" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) \
            >/dev/null 2>&1 || echo "run-all.sh: could not install$need (tests will skip)" >&2
    fi
fi

python3 -m pip install -q -e '.[test]' || exit 1

status=0
python3 -m ruff check moddep tests || status=1
python3 -m mypy moddep || status=1

python3 -m pytest -q -ra tests
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-all.sh: pytest collected no tests" >&2
    rc=1
fi
[ "$rc" -ne 0 ] && status=$rc
exit "$status"
