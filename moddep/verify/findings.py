"""What ``verify`` reports: findings with a severity and a stable code, from one table.

Every check has a code (kebab-case, stable across releases: CI filters on it), a default
severity and a group (the JUnit test suite it lands in). Messages name modules, symbols and
files, never offsets or bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)  # most severe first
_RANK = {ERROR: 2, WARNING: 1, INFO: 0}

# check groups, in report order
INDEXES, SYMBOLS, MODULES, FIRMWARE, DEPENDS = (
    "indexes", "symbols", "modules", "firmware", "dependencies")
GROUPS = (INDEXES, SYMBOLS, MODULES, DEPENDS, FIRMWARE)


@dataclass(frozen=True)
class Check:
    """One kind of finding verify reports."""

    code: str
    severity: str
    group: str
    title: str  # what a clean result of this check means, for reports


CHECKS: dict[str, Check] = {c.code: c for c in (
    # index files on disk against the recomputed ones
    Check("index-missing", ERROR, INDEXES, "every index file depmod writes is present"),
    Check("index-different", ERROR, INDEXES, "index files match the modules"),
    Check("index-extra", WARNING, INDEXES, "no index file this depmod would not write"),
    Check("index-corrupt", ERROR, INDEXES, ".bin indexes are well-formed"),
    Check("index-disagree", ERROR, INDEXES, "text indexes and .bin indexes agree"),
    Check("index-unreadable", ERROR, INDEXES, "index files can be read"),
    # symbols
    Check("unresolved-symbol", ERROR, SYMBOLS,
          "every symbol a module needs is exported by the kernel or a module"),
    Check("crc-mismatch", ERROR, SYMBOLS, "symbol versions (CRCs) agree"),
    Check("symbols-not-checked", INFO, SYMBOLS, "kernel symbols are known"),
    # modules
    Check("module-unreadable", ERROR, MODULES, "every module file can be read"),
    Check("vermagic-mismatch", ERROR, MODULES, "every vermagic names the kernel version"),
    Check("vermagic-missing", WARNING, MODULES, "every module has a vermagic"),
    Check("duplicate-module", WARNING, MODULES, "module names are unique"),
    Check("not-in-order", WARNING, MODULES, "modules.order lists every module"),
    Check("order-stale", INFO, MODULES, "modules.order lists only installed modules"),
    Check("order-missing", WARNING, MODULES, "modules.order exists"),
    Check("depmod-error", ERROR, MODULES, "depmod reports no error"),
    Check("depmod-warning", WARNING, MODULES, "depmod reports no warning"),
    # dependencies
    Check("dependency-cycle", ERROR, DEPENDS, "no dependency cycle"),
    Check("depends-mismatch", WARNING, DEPENDS,
          "modinfo depends= matches the dependencies symbols give"),
    # firmware
    Check("firmware-missing", WARNING, FIRMWARE, "firmware named by modules is installed"),
    Check("firmware-not-checked", INFO, FIRMWARE, "a firmware directory exists"),
)}


@dataclass(frozen=True)
class Finding:
    """One thing verify found. ``items`` are the exact names concerned (symbols, files,
    aliases) for machines; ``details`` are extra lines for people."""

    code: str
    message: str
    module: Optional[str] = None
    file: Optional[str] = None
    items: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    severity: str = field(default="")

    def __post_init__(self) -> None:
        if self.code not in CHECKS:
            raise ValueError(f"unknown finding code {self.code!r}")
        if not self.severity:
            object.__setattr__(self, "severity", CHECKS[self.code].severity)
        elif self.severity not in _RANK:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def group(self) -> str:
        return CHECKS[self.code].group

    @property
    def subject(self) -> str:
        """What the finding is about: the module, else the file, else the code."""
        return self.module or self.file or self.code

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"severity": self.severity, "code": self.code,
                                  "group": self.group, "message": self.message}
        if self.module is not None:
            out["module"] = self.module
        if self.file is not None:
            out["file"] = self.file
        if self.items:
            out["items"] = list(self.items)
        if self.details:
            out["details"] = list(self.details)
        return out


def at_least(severity: str, threshold: str) -> bool:
    """Whether ``severity`` is at or above ``threshold`` (``"never"``: nothing is)."""
    if threshold == "never":
        return False
    return _RANK[severity] >= _RANK[threshold]


_CODE_ORDER = {code: i for i, code in enumerate(CHECKS)}


def sort_key(f: Finding) -> tuple[int, int, int, str, str]:
    """Most severe first, then by group, code (in table order), subject and message."""
    return (-_RANK[f.severity], GROUPS.index(f.group), _CODE_ORDER[f.code], f.subject,
            f.message)
