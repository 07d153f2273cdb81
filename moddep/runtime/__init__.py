"""The runtime side: what modprobe, insmod, rmmod, lsmod and modinfo need on a target.

Standard library only (``zstandard`` when ``.ko.zst`` files must be decompressed here).
One file per concern, the kernel faked at one seam::

    modprobe_d.py  modprobe.d directives, collected and parsed as libkmod does
    cmdline.py     module options and blacklists on the kernel command line
    index.py       lookups in the module directory's .bin indexes (text fallback)
    resolve.py     names/aliases -> modules, dependencies, softdeps, probe lists (pure)
    engine.py      modprobe's insert and remove procedures over the seams below
    state.py       /proc/modules and /sys/module/* under a root (read only)
    kernel.py      THE kernel seam: finit_module/init_module/delete_module, per-arch numbers
    fake.py        a simulated kernel for tests (a Loader keeping /proc and /sys in a dir)
    info.py        a module's modinfo list; signature.py its signature
    getopt.py      glibc getopt_long semantics for the command lines

The command-line edges are ``moddep/tools/{modprobe,insmod,rmmod,lsmod,modinfo}.py``.
"""
