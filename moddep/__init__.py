"""moddep: build and check Linux kernel-module indexes offline, byte-identical to kmod."""

__version__ = "0.1.0"
