################################################################################
#
# python-moddep
#
################################################################################

# moddep on the build host, from the source tree this BR2_EXTERNAL tree lives in.
# Keep the version equal to pyproject.toml's (tests/test_integrations_buildroot.py checks).
PYTHON_MODDEP_VERSION = 0.1.0
PYTHON_MODDEP_SITE = $(BR2_EXTERNAL_MODDEP_PATH)/..
PYTHON_MODDEP_SITE_METHOD = local
PYTHON_MODDEP_LICENSE = GPL-2.0+
PYTHON_MODDEP_SETUP_TYPE = setuptools

# moddep imports only the standard library (gzip, lzma, zlib, mmap, multiprocessing ...);
# host-python3 is built with zlib and xz. zstd-compressed modules (.ko.zst) also need the
# 'zstandard' module, which Buildroot does not package: index such trees with a moddep
# installed elsewhere, or build the kernel with xz or gzip module compression.

$(eval $(host-python-package))
