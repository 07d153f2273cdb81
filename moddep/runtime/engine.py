"""modprobe's procedures: insert with dependencies and softdeps, remove with what became unused.

This is ``kmod_module_probe_insert_module`` and friends from libkmod plus the insert/remove
logic of kmod's ``tools/modprobe.c`` (KMOD_NOTES §12.4, §12.5), over three seams:

* a :class:`~moddep.runtime.resolve.Resolver` for names, paths, dependencies and configuration;
* a :class:`~moddep.runtime.state.KernelState` for what is loaded (read at each step, as kmod
  does, so a module loaded meanwhile by an install command is seen);
* a :class:`~moddep.runtime.kernel.Loader` for the system calls and a :class:`CommandRunner`
  for install/remove commands. Dry runs get refusing ones, so a dry run cannot change the
  system even through a bug here.

Messages go to a :class:`Reporter` (the CLI prints them). kmod's ``LOG()`` messages use
:attr:`Engine.log_level`: FATAL by default (the reporter ends the run once one is printed, kmod
exits there), WARNING with ``-a``. Return values follow libkmod: 0 or a positive "skipped"
code for success, a negative errno for failure.

Deliberate differences from kmod:

* Install/remove commands get ``$CMDLINE_OPTS`` as shell-quoted words (split as the kernel
  splits parameters), so option text never becomes shell syntax; the module name is passed only
  in the environment (``MODPROBE_MODULE``). kmod pastes the options in unquoted.
* ``modprobe -r`` removes the dependencies that became unused in dependents-first order,
  re-reading each one's use count just before, so a whole chain of dependencies goes
  (``modprobe -r pppox`` also removes ppp_generic and then slhc). kmod walks the same list
  deepest first, so a dependency still held by a sibling dependency at its turn stays loaded.
  A module with users is never removed either way. Likewise, when ``--remove-holders`` took
  the module itself along with a holder, moddep stops there; kmod then tries to delete a
  module that is gone and fails.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import Optional, Protocol

from moddep.diag import DEBUG, ERROR, FATAL, INFO, WARNING
from moddep.errors import KernelError
from moddep.runtime.kernel import (
    MODPROBE_MESSAGES,
    REMOVE_FORCE,
    REMOVE_NOWAIT,
    Loader,
    StripError,
    insert_file,
    message,
)
from moddep.runtime.resolve import Module, ResolveError, Resolver, fs
from moddep.runtime.state import LIVE, KernelState

BUILTIN = "builtin"

# positive results of insert(): the module was skipped because of a blacklist
SKIPPED_BLACKLIST = 1


class Reporter(Protocol):
    """Where the engine's output goes. ``module`` marks "in use" messages, for which the CLI
    adds who holds the module."""

    def log(self, level: int, text: str, module: Optional[bytes] = None) -> None: ...

    def show(self, line: bytes) -> None: ...


class CommandRunner(Protocol):
    """Runs an install/remove command; returns its exit status, or -1 if it could not run."""

    def run(self, command: bytes, module: bytes) -> int: ...


class ShellRunner:
    """``/bin/sh -c COMMAND`` with ``MODPROBE_MODULE`` set, as libkmod's system() call."""

    def __init__(self, shell: bytes = b"/bin/sh",
                 env: Optional[dict[bytes, bytes]] = None) -> None:
        self.shell = shell
        self.env = env

    def run(self, command: bytes, module: bytes) -> int:
        import subprocess

        env = dict(os.environb if self.env is None else self.env)
        env[b"MODPROBE_MODULE"] = module
        try:
            proc = subprocess.run([self.shell, b"-c", command], env=env, check=False)
        except OSError:
            return -1
        if proc.returncode < 0:  # killed by a signal: system() reports 128+n through sh
            return 128 - proc.returncode
        return proc.returncode


class RefusingRunner:
    """The command runner of dry runs."""

    def run(self, command: bytes, module: bytes) -> int:
        from moddep.runtime.kernel import DryRunViolation

        raise DryRunViolation(f"dry run: refusing to run {command!r}")


def _param_words(options: bytes) -> list[bytes]:
    """Split options as the kernel splits module parameters (blanks; quotes protect)."""
    words: list[bytes] = []
    cur = bytearray()
    quoted = False
    started = False
    for c in options:
        if c == 0x22:
            quoted = not quoted
        if not quoted and c in b" \t\n":
            if started:
                words.append(bytes(cur))
                cur.clear()
                started = False
            continue
        cur.append(c)
        started = True
    if started:
        words.append(bytes(cur))
    return words


def shell_quote(word: bytes) -> bytes:
    if word and all(c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                          b"_-.,=:/+@%" for c in word):
        return word
    return b"'" + word.replace(b"'", b"'\\''") + b"'"


def substitute_options(command: bytes, options: Optional[bytes]) -> bytes:
    """``command`` with every ``$CMDLINE_OPTS`` replaced by the options as quoted words."""
    words = b" ".join(shell_quote(w) for w in _param_words(options or b""))
    return command.replace(b"$CMDLINE_OPTS", words)


@dataclass
class Options:
    """modprobe's behaviour switches (the command line, parsed)."""

    dry_run: bool = False  # -n, -D: no kernel calls, no commands
    show: bool = False  # print actions (-D, or -v)
    ignore_loaded: bool = False  # -D
    ignore_commands: bool = False  # -i
    first_time: bool = False  # --first-time
    use_blacklist: bool = False  # -b
    force_modversion: bool = False  # -f, --force-modversion
    force_vermagic: bool = False  # -f, --force-vermagic
    force_remove: bool = False  # -f with -r
    remove_holders: bool = False  # --remove-holders
    wait_msec: int = 0  # -w


class Fatal(Exception):
    """A FATAL message was printed: kmod exits 1 right there."""


class Engine:
    """modprobe's insert and remove procedures (see the module documentation)."""

    def __init__(self, resolver: Resolver, state: KernelState, loader: Loader,
                 runner: CommandRunner, reporter: Reporter, options: Options,
                 log_level: int = FATAL) -> None:
        self.r = resolver
        self.state = state
        self.loader = loader
        self.runner = runner
        self.out = reporter
        self.opt = options
        self.log_level = log_level
        self.kernel_compression = state.kernel_compression()

    # -- kernel state -----------------------------------------------------------------------

    def initstate(self, mod: Module) -> Optional[str]:
        """``builtin``, ``live``, ``coming``, ``going``, or None (not loaded)."""
        if self.r.is_builtin(mod):
            return BUILTIN
        state = self.state.initstate(mod.name)
        if state == "?":
            self.out.log(ERROR, f"unknown /sys/module/{fs(mod.name)}/initstate")
            return None
        return state

    def in_kernel(self, mod: Module) -> bool:
        return self.initstate(mod) in (LIVE, BUILTIN)

    # -- insertion (libkmod) ----------------------------------------------------------------

    def _show_action(self, mod: Module, install: bool, options: bytes) -> None:
        """modprobe's print_action."""
        if not self.opt.show:
            return
        if install:
            cmd = self.r.install_command(mod) or b""
            self.out.show(b"install " + cmd + b" " + options + b"\n")
            return
        path = self.r.path(mod)
        if path is None:
            if self.initstate(mod) == BUILTIN:
                self.out.show(b"builtin " + mod.name + b"\n")
        else:
            self.out.show(b"insmod " + path + b" " + options + b"\n")

    def insert_module(self, mod: Module, options: Optional[bytes]) -> int:
        """kmod_module_insert_module: load one module file."""
        path = self.r.path(mod)
        if path is None:
            self.out.log(ERROR, f"could not find module by name='{fs(mod.name)}'")
            return -errno.ENOENT
        try:
            how = insert_file(self.loader, path, options or b"",
                              force_modversion=self.opt.force_modversion,
                              force_vermagic=self.opt.force_vermagic,
                              kernel_compression=self.kernel_compression)
        except KernelError as e:
            if isinstance(e, StripError):
                self.out.log(ERROR, e.message)
            self.out.log(INFO, f"Failed to insert module '{fs(path)}': {os.strerror(e.errno)}")
            return -(e.errno or errno.EINVAL)
        codec = f"{how.codec}-compressed " if how.codec else ""
        where = ("by the kernel" if how.syscall == "finit_module" and how.codec
                 else "in userspace" if how.codec else "")
        self.out.log(DEBUG, f"inserted {codec}{fs(path)} with {how.syscall}"
                            + (f", decompressed {where}" if where else ""))
        return 0

    def _run_install(self, mod: Module, options: Optional[bytes]) -> int:
        command = substitute_options(self.r.install_command(mod) or b"", options)
        status = self.runner.run(command, mod.name)
        if status == -1:
            self.out.log(ERROR, f"Could not run install command '{fs(command)}' for module "
                                f"{fs(mod.name)}: {os.strerror(errno.ECHILD)}")
            return -errno.EINVAL
        if status:
            self.out.log(ERROR, f"Error running install command '{fs(command)}' for module "
                                f"{fs(mod.name)}: retcode {status}")
            return -errno.EINVAL
        return 0

    def probe_insert(self, mod: Module, extra: Optional[bytes]) -> int:
        """kmod_module_probe_insert_module with modprobe's flags."""
        opt = self.opt
        if not opt.ignore_loaded and self.in_kernel(mod):
            return -errno.EEXIST if opt.first_time else 0
        if self.r.is_blacklisted(mod) and (mod.alias is not None or opt.use_blacklist):
            return SKIPPED_BLACKLIST
        err = 0
        for m in self.r.probe_list(mod, opt.ignore_commands):
            if not opt.ignore_loaded and self.in_kernel(m):
                self.out.log(DEBUG, f"Ignoring module '{fs(m.name)}': already loaded")
                err = -errno.EEXIST
            else:
                moptions = self.r.options(m)
                xopt = extra if m is mod else None
                if moptions is None:
                    options = xopt
                else:
                    options = moptions + b" " + (xopt or b"")
                cmd = self.r.install_command(m)
                if cmd is not None and not m.ignorecmd:
                    self._show_action(m, True, options or b"")
                    if not opt.dry_run:
                        err = self._run_install(m, options)
                else:
                    self._show_action(m, False, options or b"")
                    if not opt.dry_run:
                        err = self.insert_module(m, options)
            if err == -errno.EEXIST and m is mod and opt.first_time:
                break
            if err == -errno.EEXIST or not m.required:
                err = 0
            elif err < 0:
                break
        return err

    # -- insertion (modprobe) ---------------------------------------------------------------

    def insmod(self, arg: bytes, extra: Optional[bytes], lookup_only: bool = False) -> int:
        """modprobe's insmod(): resolve ``arg`` and insert each module it names."""
        mods: list[Module]
        if arg.startswith(b"/") or arg.startswith(b"./"):
            try:
                mods = [self.r.from_path(arg)]
            except ResolveError as e:
                self.out.log(self.log_level, f"Failed to get module from path {fs(arg)}: "
                                             f"{os.strerror(e.errno)}")
                return -errno.ENOENT
        else:
            found = self.r.lookup(arg)
            if not found:
                self.out.log(self.log_level, f"Module {fs(arg)} not found in directory "
                                             f"{fs(self.r.dirname)}")
                return -errno.ENOENT
            mods = found
        err = 0
        for mod in mods:
            err = self._insmod_insert(mod, extra, lookup_only)
        return err

    def _insmod_insert(self, mod: Module, extra: Optional[bytes], lookup_only: bool) -> int:
        if lookup_only:
            self.out.show(mod.name + b"\n")
            return 0
        err = self.probe_insert(mod, extra)
        if err >= 0:
            return 0
        text = message(-err, MODPROBE_MESSAGES)
        self.out.log(ERROR, f"could not insert '{fs(mod.name)}': {text}")
        return err

    # -- removal ----------------------------------------------------------------------------

    def remove_module(self, mod: Module, nolog: bool = False) -> int:
        """kmod_module_remove_module: delete_module(name, O_NONBLOCK [| O_TRUNC])."""
        flags = REMOVE_NOWAIT | (REMOVE_FORCE if self.opt.force_remove else 0)
        try:
            self.loader.delete_module(mod.name, flags)
        except KernelError as e:
            if not nolog:
                self.out.log(ERROR, f"could not remove '{fs(mod.name)}': "
                                    f"{os.strerror(e.errno)}")
            return -(e.errno or errno.EINVAL)
        return 0

    def _do_remove(self, mod: Module) -> int:
        """modprobe's rmmod_do_remove_module (with -w's retries)."""
        opt = self.opt
        self._show(b"rmmod " + mod.name + b"\n")
        if opt.dry_run:
            return 0
        deadline = 0.0
        interval = 0.0
        while True:
            err = self.remove_module(mod, nolog=bool(opt.wait_msec))
            if err == -errno.EEXIST:
                if not opt.first_time:
                    err = 0
                else:
                    self.out.log(self.log_level, f"Module {fs(mod.name)} is not in kernel.")
                break
            if err == -errno.EAGAIN and opt.wait_msec:
                now = time.monotonic()
                if not deadline:
                    deadline = now + opt.wait_msec / 1000.0
                # kmod's get_backoff_delta_msec: double the wait, never past the deadline
                interval = interval * 2 if interval else 0.001
                while interval >= 0.001 and now + interval > deadline:
                    interval /= 2
                if interval < 0.001:
                    interval = deadline - now if deadline > now else 0.0
                if interval <= 0:
                    break
                time.sleep(interval)
                continue
            break
        if err < 0 and opt.wait_msec:
            self.out.log(ERROR, f"could not remove '{fs(mod.name)}': {os.strerror(-err)}")
        return err

    def _show(self, line: bytes) -> None:
        if self.opt.show:
            self.out.show(line)

    def _command(self, mod: Module, kind: str, command: bytes) -> int:
        """modprobe's command_do (remove commands): show, then run unless dry."""
        cmd = substitute_options(command, None)
        self._show(kind.encode() + b" " + cmd + b"\n")
        if self.opt.dry_run:
            return 0
        status = self.runner.run(cmd, mod.name)
        if status:
            self.out.log(self.log_level,
                         f"Error running {kind} command for {fs(mod.name)}")
            return -1 if status == -1 else -status
        return 0

    def _remove_list(self, mods: list[Module], stop_on_errors: bool) -> int:
        for m in reversed(mods):
            r = self.rmmod_module(m, remove_holders=False, ignore_builtin=True)
            if r < 0 and stop_on_errors:
                return r
        return 0

    def rmmod_module(self, mod: Module, remove_holders: bool, ignore_builtin: bool) -> int:
        """modprobe's rmmod_do_module."""
        opt = self.opt
        pre: list[Module] = []
        post: list[Module] = []
        cmd: Optional[bytes] = None
        if not opt.ignore_commands:
            pre, post = self.r.softdeps(mod)
            cmd = self.r.remove_command(mod)
        if cmd is None and not opt.ignore_loaded:
            state = self.initstate(mod)
            if state is None:
                if opt.first_time:
                    self.out.log(self.log_level, f"Module {fs(mod.name)} is not in kernel.")
                    return -errno.ENOENT
                return 0
            if state == BUILTIN:
                if ignore_builtin:
                    return 0
                self.out.log(self.log_level, f"Module {fs(mod.name)} is builtin.")
                return -errno.ENOENT
        self._remove_list(post, False)
        if remove_holders:
            holders = [self.r.from_name(h) for h in self.state.holders(mod.name) or ()]
            err = self._remove_list(holders, True)
            if err < 0:
                return err
            if cmd is None and holders and not opt.dry_run and self.initstate(mod) is None:
                # a holder took it along as an unused dependency (kmod would now fail to
                # delete a module that is gone)
                self._remove_list(pre, False)
                return 0
        if cmd is None and not opt.ignore_loaded and not opt.wait_msec:
            usage = self.state.refcnt(mod.name)
            if usage is not None and usage > 0:
                self.out.log(self.log_level, f"Module {fs(mod.name)} is in use.", mod.name)
                return -errno.EBUSY
        err = self._do_remove(mod) if cmd is None else self._command(mod, "remove", cmd)
        if err < 0:
            return err
        if cmd is None:
            # dependents first (kmod walks deepest first; see the module documentation)
            for dep in reversed(self.r.dependencies(mod)):
                if self.state.refcnt(dep.name) == 0:
                    self._do_remove(dep)
        self._remove_list(pre, False)
        return err

    def rmmod(self, arg: bytes) -> int:
        """modprobe's rmmod(): resolve ``arg`` and remove each module it names."""
        found = self.r.lookup(arg)
        if found is None:
            return -errno.EINVAL
        if not found:
            self.out.log(self.log_level, f"Module {fs(arg)} not found.")
            return -errno.ENOENT
        err = 0
        for mod in found:
            err = self.rmmod_module(mod, self.opt.remove_holders, ignore_builtin=False)
            if err < 0:
                break
        return err


__all__ = ["Engine", "Options", "Reporter", "CommandRunner", "ShellRunner", "RefusingRunner",
           "Fatal", "substitute_options", "WARNING"]
