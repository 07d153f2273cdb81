################################################################################
#
# moddep BR2_EXTERNAL tree (README.md)
#
################################################################################

include $(sort $(wildcard $(BR2_EXTERNAL_MODDEP_PATH)/package/*/*.mk))

MODDEP_DEPMOD_SCRIPT = $(BR2_EXTERNAL_MODDEP_PATH)/scripts/moddep-depmod.sh

ifeq ($(BR2_PACKAGE_HOST_PYTHON_MODDEP_DEPMOD),y)

# What only make knows: the kernel release (LINUX_VERSION_PROBED asks the kernel's own
# Makefile, in backquotes, when the command runs) and the kernel's build directory (for
# Module.symvers / System.map). Without BR2_LINUX_KERNEL the script finds both on its own.
ifeq ($(BR2_LINUX_KERNEL),y)
MODDEP_DEPMOD_KERNEL_OPTS = \
	--kver=$(LINUX_VERSION_PROBED) \
	--kernel-build-dir=$(LINUX_DIR)
endif

# The command both steps below run (TARGET_DIR is expanded where each step runs).
MODDEP_DEPMOD_CMD = \
	MODDEP=$(HOST_DIR)/bin/moddep \
	BUILD_DIR=$(BUILD_DIR) \
	PARALLEL_JOBS=$(PARALLEL_JOBS) \
	$(MODDEP_DEPMOD_SCRIPT) $(TARGET_DIR) $(MODDEP_DEPMOD_KERNEL_OPTS)

# The image's depmod step. fs/common.mk writes ROOTFS_PRE_CMD_HOOKS into the fakeroot script
# of every filesystem image, where TARGET_DIR is that image's own copy of the target
# directory, made after target-finalize: after the rootfs overlays were copied and the
# post-build scripts ran. So modules added by either are indexed. (Only post-fakeroot
# scripts run later; README.md says what to do if one of those adds modules.)
define MODDEP_DEPMOD_ROOTFS_HOOK
	$(MODDEP_DEPMOD_CMD)
endef
ROOTFS_PRE_CMD_HOOKS += MODDEP_DEPMOD_ROOTFS_HOOK

# Buildroot's own depmod: linux/linux.mk defines LINUX_RUN_DEPMOD (host-kmod's depmod on
# TARGET_DIR) and adds it to the target-finalize hooks, which expand it only when they run.
# This file is included after linux.mk, so redefining it here makes that step run moddep
# instead, on output/target (which then holds moddep's indexes too). It runs before overlays
# and post-build scripts, so it only indexes: the checks run in the image step above.
define LINUX_RUN_DEPMOD
	$(MODDEP_DEPMOD_CMD) --no-verify --no-fail-on-unresolved
endef

endif # BR2_PACKAGE_HOST_PYTHON_MODDEP_DEPMOD
