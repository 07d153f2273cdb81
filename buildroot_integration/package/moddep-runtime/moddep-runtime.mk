################################################################################
#
# moddep-runtime
#
################################################################################

# moddep's runtime tools on the target, from the source tree this BR2_EXTERNAL tree lives in.
# Keep the version equal to pyproject.toml's (tests/test_integrations_buildroot.py checks).
MODDEP_RUNTIME_VERSION = 0.1.0
MODDEP_RUNTIME_SITE = $(BR2_EXTERNAL_MODDEP_PATH)/..
MODDEP_RUNTIME_SITE_METHOD = local
MODDEP_RUNTIME_LICENSE = GPL-2.0+
MODDEP_RUNTIME_SETUP_TYPE = setuptools

MODDEP_RUNTIME_KMOD_TOOLS = depmod modprobe insmod rmmod lsmod modinfo

ifeq ($(BR2_PACKAGE_MODDEP_RUNTIME_KMOD_NAMES),y)
# A target-finalize hook, so that the links win over BusyBox's applet links whatever the
# order the packages were installed in (and with per-package directories).
define MODDEP_RUNTIME_INSTALL_KMOD_NAMES
	mkdir -p $(TARGET_DIR)/sbin
	$(foreach tool,$(MODDEP_RUNTIME_KMOD_TOOLS),\
		ln -sf /usr/bin/moddep $(TARGET_DIR)/sbin/$(tool)$(sep))
endef
MODDEP_RUNTIME_TARGET_FINALIZE_HOOKS += MODDEP_RUNTIME_INSTALL_KMOD_NAMES
endif

$(eval $(python-package))
