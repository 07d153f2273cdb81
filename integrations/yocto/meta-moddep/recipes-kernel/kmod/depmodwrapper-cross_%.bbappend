# meta-moddep: OE-core's depmodwrapper runs moddep's depmod instead of kmod-native's.
#
# depmodwrapper is what OE-core runs to index an image's kernel modules (rootfs.py, at the
# end of do_rootfs: "depmodwrapper -a -b IMAGE_ROOTFS KERNEL_VERSION KERNEL_PACKAGE_NAME")
# and what kernel package scripts run offline. This keeps its name, its arguments and its
# PKGDATA_DIR lookups, and replaces the program behind it (files/depmodwrapper.in).

FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://depmodwrapper.in"

DEPENDS:remove = "kmod-native"
DEPENDS += "python3-moddep-native"

# kmod generation whose output to reproduce (30..34; OE-core's kmod is 34.x)
MODDEP_KMOD_VERSION ?= "34"
# "1": fail the image when a module needs a symbol nothing exports (needs System.map)
MODDEP_FAIL_ON_UNRESOLVED ?= "0"
# "1": run "moddep verify" on the image after indexing, fail on its findings
MODDEP_VERIFY ?= "0"

do_install() {
	install -d ${D}${bindir_crossscripts}
	sed -e 's|@PKGDATA_DIR@|${PKGDATA_DIR}|g' \
	    -e 's|@NONARCH_BASE_LIBDIR@|${nonarch_base_libdir}|g' \
	    -e 's|@MODDEP_KMOD_VERSION@|${MODDEP_KMOD_VERSION}|g' \
	    -e 's|@MODDEP_FAIL_ON_UNRESOLVED@|${MODDEP_FAIL_ON_UNRESOLVED}|g' \
	    -e 's|@MODDEP_VERIFY@|${MODDEP_VERIFY}|g' \
	    ${S}/depmodwrapper.in > ${D}${bindir_crossscripts}/depmodwrapper
	chmod 0755 ${D}${bindir_crossscripts}/depmodwrapper
}
