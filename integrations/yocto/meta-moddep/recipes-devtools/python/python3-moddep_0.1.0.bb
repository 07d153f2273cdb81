SUMMARY = "Kernel-module indexes byte-identical to kmod's depmod, and module tools"
DESCRIPTION = "moddep builds modules.dep, modules.alias, ... and their .bin indexes offline, \
for module trees of any architecture, byte for byte as kmod's depmod writes them; plus \
modprobe, insmod, rmmod, lsmod, modinfo and checks of the indexes."
SECTION = "devel/python"
LICENSE = "GPL-2.0-or-later"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/GPL-2.0-or-later;md5=fed54355545ffd980b814dab4a3b312c"

# Built from the checkout this layer lives in (externalsrc), or from MODDEP_SRC_URI
# (e.g. "git://example.org/moddep.git;protocol=https;branch=main" plus SRCREV) when set.
MODDEP_SRC_URI ??= ""
SRC_URI = "${MODDEP_SRC_URI}"
inherit ${@'externalsrc' if not d.getVar('MODDEP_SRC_URI') else ''}
EXTERNALSRC = "${@d.getVar('MODDEP_TOPDIR') if not d.getVar('MODDEP_SRC_URI') else ''}"
EXTERNALSRC_BUILD = "${WORKDIR}/build"

inherit python_setuptools_build_meta

# Only the standard library at run time; zstandard is needed for .ko.zst modules only.
RDEPENDS:${PN} += " \
    python3-core \
    python3-compression \
    python3-crypt \
    python3-ctypes \
    python3-fcntl \
    python3-io \
    python3-json \
    python3-mmap \
    python3-multiprocessing \
    python3-netclient \
    python3-pickle \
    python3-syslog \
"

BBCLASSEXTEND = "native nativesdk"
