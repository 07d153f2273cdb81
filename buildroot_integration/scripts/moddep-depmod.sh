#!/bin/sh
# moddep-depmod.sh: index a Buildroot target directory's kernel modules with moddep.
#
# Runs in two places (README.md):
#   * from external.mk, as a ROOTFS_PRE_CMD_HOOKS entry (inside the fakeroot script of every
#     filesystem image, on that image's copy of the target directory, after the overlays and
#     the post-build scripts) and in place of Buildroot's LINUX_RUN_DEPMOD;
#   * by hand, as a post-fakeroot or (last) post-build script: Buildroot then passes the
#     target directory as $1 and exports TARGET_DIR, HOST_DIR, BUILD_DIR, BR2_CONFIG, ...
#
# Usage: moddep-depmod.sh [TARGET_DIR] [--kver=VERSION] [--kernel-build-dir=DIR]
#            [--symvers=FILE | --system-map=FILE] [--kmod-version=N]
#            [--verify | --no-verify] [--fail-on-unresolved | --no-fail-on-unresolved]
#
# Settings come from the Buildroot configuration ($BR2_CONFIG, the
# BR2_PACKAGE_HOST_PYTHON_MODDEP_* options); the options above override them. Other
# arguments are ignored with a note: Buildroot gives BR2_ROOTFS_POST_SCRIPT_ARGS to every
# post-build/post-fakeroot script.
#
# The kernel release is --kver, else $LINUX_VERSION_PROBED, else the one a kernel build
# directory under $BUILD_DIR (linux-*/include/config/kernel.release) names and the target
# has modules for, else the only one under the target's lib/modules. The kernel's exported
# symbols (for unresolved-symbol checks) are --symvers/--system-map, else Module.symvers,
# else System.map of that kernel build directory.
#
# Environment: MODDEP (the moddep program; default $HOST_DIR/bin/moddep, else moddep on
# PATH), PARALLEL_JOBS (-j), MODDEP_CACHE_DIR (else $BUILD_DIR/.moddep-cache).
# Exit status: 0 done (or no modules to index), 1 a failed step or check, 2 bad usage.

set -u

me="moddep-depmod"

say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "$me" "$*" >&2; exit "${2:-1}"; }

# Value of option $1 in $BR2_CONFIG (last assignment wins, quotes and escapes removed).
config_value() {
    [ -n "${BR2_CONFIG:-}" ] && [ -r "$BR2_CONFIG" ] || return 0
    sed -n "s/^$1=//p" "$BR2_CONFIG" | tail -n 1 |
        sed -e 's/^"\(.*\)"$/\1/' -e 's/\\"/"/g' -e 's/\\\\/\\/g'
}

opt=BR2_PACKAGE_HOST_PYTHON_MODDEP
kmod_version=$(config_value ${opt}_KMOD_VERSION)
verify=$(config_value ${opt}_VERIFY)
verify_opts=$(config_value ${opt}_VERIFY_OPTS)
fail_unresolved=$(config_value ${opt}_FAIL_ON_UNRESOLVED)
depmod_opts=$(config_value ${opt}_DEPMOD_OPTS)

target=""
kver=""
kbuild=""
symvers=""
sysmap=""
for arg in "$@"; do
    case $arg in
        --kver=*) kver=${arg#*=} ;;
        --kernel-build-dir=*) kbuild=${arg#*=} ;;
        --symvers=*) symvers=${arg#*=} ;;
        --system-map=*) sysmap=${arg#*=} ;;
        --kmod-version=*) kmod_version=${arg#*=} ;;
        --verify) verify=y ;;
        --no-verify) verify="" ;;
        --fail-on-unresolved) fail_unresolved=y ;;
        --no-fail-on-unresolved) fail_unresolved="" ;;
        --help|-h) sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) say "ignoring argument '$arg' (not one of this script's)" ;;
        *)
            if [ -z "$target" ] && [ -d "$arg" ]; then
                target=$arg
            else
                say "ignoring argument '$arg' (not one of this script's)"
            fi
            ;;
    esac
done
[ -n "$target" ] || target=${TARGET_DIR:-}
[ -n "$target" ] || die "no target directory: pass it as the first argument or set TARGET_DIR" 2
[ -d "$target" ] || die "target directory $target does not exist" 2
case $kmod_version in
    ""|30|31|32|33|34) ;;
    *) die "kmod generation '$kmod_version' is not one of 30..34" 2 ;;
esac

# The moddep program.
if [ -n "${MODDEP:-}" ]; then
    moddep=$MODDEP
elif [ -n "${HOST_DIR:-}" ] && [ -x "$HOST_DIR/bin/moddep" ]; then
    moddep=$HOST_DIR/bin/moddep
elif command -v moddep >/dev/null 2>&1; then
    moddep=$(command -v moddep)
else
    die "moddep not found (enable BR2_PACKAGE_HOST_PYTHON_MODDEP, or set MODDEP)"
fi

# The module directory below the target: lib/modules, or usr/lib/modules when only that
# exists (moddep depmod's own rule).
if [ -d "$target/lib/modules" ]; then
    moddir=lib/modules
elif [ -d "$target/usr/lib/modules" ]; then
    moddir=usr/lib/modules
else
    say "no lib/modules in $target: no kernel modules to index"
    exit 0
fi

# Kernel build directories under $BUILD_DIR that name release $1 (one per line).
kernel_builds_for() {
    [ -n "${BUILD_DIR:-}" ] || return 0
    for rel in "$BUILD_DIR"/linux-*/include/config/kernel.release; do
        [ -r "$rel" ] || continue
        if [ "$(cat "$rel")" = "$1" ]; then
            printf '%s\n' "${rel%/include/config/kernel.release}"
        fi
    done
}

if [ -z "$kver" ]; then
    kver=${LINUX_VERSION_PROBED:-}
fi
if [ -z "$kver" ] && [ -n "${BUILD_DIR:-}" ]; then
    for rel in "$BUILD_DIR"/linux-*/include/config/kernel.release; do
        [ -r "$rel" ] || continue
        cand=$(cat "$rel")
        if [ -n "$cand" ] && [ -d "$target/$moddir/$cand" ]; then
            [ -z "$kver" ] || [ "$kver" = "$cand" ] ||
                die "kernel builds for both $kver and $cand under $BUILD_DIR: pass --kver=VERSION" 2
            kver=$cand
        fi
    done
fi
if [ -z "$kver" ]; then
    found=""
    count=0
    for d in "$target/$moddir"/*; do
        [ -d "$d" ] || continue
        found="$found${found:+ }${d##*/}"
        count=$((count + 1))
    done
    [ "$count" -le 1 ] ||
        die "modules for several kernels in $target/$moddir ($found): pass --kver=VERSION" 2
    kver=$found
fi
if [ -z "$kver" ] || [ ! -d "$target/$moddir/$kver" ]; then
    say "no modules for kernel ${kver:-(none)} in $target/$moddir: nothing to index"
    exit 0
fi

# The kernel's exported symbols, for -e.
if [ -z "$symvers" ] && [ -z "$sysmap" ]; then
    if [ -z "$kbuild" ]; then
        kbuild=$(kernel_builds_for "$kver" | head -n 1)
    fi
    if [ -n "$kbuild" ] && [ -r "$kbuild/Module.symvers" ]; then
        symvers=$kbuild/Module.symvers
    elif [ -n "$kbuild" ] && [ -r "$kbuild/System.map" ]; then
        sysmap=$kbuild/System.map
    fi
fi
if [ "$fail_unresolved" = y ] && [ -z "$symvers" ] && [ -z "$sysmap" ]; then
    die "failing on unresolved symbols needs the kernel's Module.symvers or System.map, and no kernel build directory for $kver was found (pass --kernel-build-dir=DIR, --symvers=FILE or --system-map=FILE)"
fi

set -- depmod -a -b "$target"
[ -z "$kmod_version" ] || set -- "$@" --kmod-version "$kmod_version"
if [ -n "$symvers" ]; then
    set -- "$@" -e -E "$symvers"
elif [ -n "$sysmap" ]; then
    set -- "$@" -e -F "$sysmap"
fi
[ -z "${PARALLEL_JOBS:-}" ] || set -- "$@" -j "$PARALLEL_JOBS"
cache=${MODDEP_CACHE_DIR:-}
[ -n "$cache" ] || [ -z "${BUILD_DIR:-}" ] || cache=$BUILD_DIR/.moddep-cache
[ -z "$cache" ] || set -- "$@" --cache-dir "$cache"
# shellcheck disable=SC2086 # the configured options are split on spaces, as documented
set -- "$@" $depmod_opts "$kver"

errors=$(mktemp "${TMPDIR:-/tmp}/moddep-depmod.XXXXXX") || die "cannot create a temporary file"
trap 'rm -f "$errors"' EXIT
say "$moddep $*"
"$moddep" "$@" 2>"$errors"
rc=$?
cat "$errors" >&2
[ "$rc" -eq 0 ] || die "moddep depmod failed (exit $rc)"

unresolved=$(grep -c -e ' needs unknown symbol ' -e ' disagrees about version of symbol ' \
    "$errors")
if [ "$unresolved" -gt 0 ]; then
    if [ "$fail_unresolved" = y ]; then
        die "$unresolved unresolved or mismatched module symbol(s) in $kver (BR2_PACKAGE_HOST_PYTHON_MODDEP_FAIL_ON_UNRESOLVED)"
    fi
    say "$unresolved unresolved or mismatched module symbol(s) in $kver (warnings only)"
fi

if [ "$verify" = y ]; then
    # verify recomputes the indexes: same generation and kernel symbols as depmod had
    set -- verify -b "$target"
    [ -z "$kmod_version" ] || set -- "$@" --kmod-version "$kmod_version"
    if [ -n "$symvers" ]; then
        set -- "$@" -E "$symvers"
    elif [ -n "$sysmap" ]; then
        set -- "$@" -F "$sysmap"
    fi
    [ -z "${PARALLEL_JOBS:-}" ] || set -- "$@" -j "$PARALLEL_JOBS"
    # shellcheck disable=SC2086
    set -- "$@" $verify_opts "$kver"
    say "$moddep $*"
    "$moddep" "$@" || die "moddep verify found problems in $target/$moddir/$kver (exit $?)"
fi
exit 0
