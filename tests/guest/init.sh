#!/bin/sh
# /init of the QEMU test guest (tests/guest/harness.py builds the initramfs around it).
#
# Contract with the harness:
#   /guest/nonce     one line, unique per run: prefixes every line the harness parses
#   /guest/kmod_links  tool names to link to /usr/bin/moddep in /sbin (if present)
#   /guest/script    the test's script: run directly when it starts with "#!", else by python3
#   /guest/results.json  what the script wrote (through guestlib.report() or by hand)
# The script's exit status and its results (base64 of the JSON, in numbered lines) are
# printed on the console as "<nonce>:RC:<n>", "<nonce>:R:<i>:<chunk>" and "<nonce>:RN:<count>",
# then the guest powers off (QEMU runs with -no-reboot and the kernel with panic=-1, so a
# reboot or a panic ends QEMU too).

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONUTF8=1 PYTHONUNBUFFERED=1 TERM=dumb
export GUEST_RESULTS=/guest/results.json

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
# tracefs where the kernel offers it (6.1: /sys/kernel/tracing); debugfs too, for the
# older /sys/kernel/debug/tracing path. A script may unmount them to test mounting itself.
[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ln -sf /proc/self/fd /dev/fd 2>/dev/null
hostname guest

# moddep as the kmod tools, now that the kernel's boot-time request_module() calls are done.
if [ -f /guest/kmod_links ]; then
    for tool in $(cat /guest/kmod_links); do ln -sf /usr/bin/moddep "/sbin/$tool"; done
fi

NONCE=$(cat /guest/nonce)
rm -f "$GUEST_RESULTS"
# Only warnings and worse from the kernel while the script runs (its own output stays legible).
echo 4 > /proc/sys/kernel/printk
echo "$NONCE:BEGIN"
cd /root
if [ "$(head -c 2 /guest/script)" = "#!" ]; then
    chmod 755 /guest/script
    /guest/script
else
    python3 /guest/script
fi
rc=$?
sync
# Nothing from the kernel may cut through the result lines.
echo 1 > /proc/sys/kernel/printk
echo "$NONCE:RC:$rc"
# base64 in numbered chunks, with busybox alone (a broken Python still reports its status).
[ -s "$GUEST_RESULTS" ] || echo '{}' > "$GUEST_RESULTS"
base64 "$GUEST_RESULTS" | awk -v n="$NONCE" '{ print n ":R:" NR - 1 ":" $0 } END { print n ":RN:" NR }'
echo "$NONCE:END"
poweroff -f
sleep 5
reboot -f
