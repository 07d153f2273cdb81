"""The one exception hierarchy of moddep.

Every error moddep raises on purpose is a :class:`ModdepError`. The CLI catches it once and
prints ``prog: ERROR: message`` (kmod's convention); ``--debug`` shows the traceback instead.
Messages say what went wrong, where (file, line or offset) and what was expected.
"""

from __future__ import annotations

from typing import Optional


class ModdepError(Exception):
    """Base of all moddep errors. ``path`` names the file concerned, when there is one."""

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


class UsageError(ModdepError):
    """Bad command line: kmod exits 1 for these."""


class ElfError(ModdepError):
    """A module file is not a readable ELF object (truncated, corrupt, wrong format).

    ``errno_text`` is the strerror text kmod prints for the same failure
    (``Exec format error`` or ``Invalid argument``).
    """

    def __init__(self, message: str, path: Optional[str] = None,
                 errno_text: str = "Exec format error") -> None:
        super().__init__(message, path)
        self.errno_text = errno_text


class CompressionError(ModdepError):
    """A compressed module does not decompress, is too large, or its format is unsupported."""


class ConfigError(ModdepError):
    """A configuration file (depmod.d, modprobe.d) could not be read."""


class IndexFormatError(ModdepError):
    """A ``.bin`` index is malformed: bad magic/version, offsets out of range, loops."""


class DependencyCycleError(ModdepError):
    """Modules depend on each other in a cycle; ``lines`` are kmod's report lines."""

    def __init__(self, lines: list[str], count: int) -> None:
        super().__init__(f"Found {count} modules in dependency cycles!")
        self.lines = lines
        self.count = count


class PublishError(ModdepError):
    """An index file could not be written or renamed into place."""


class KernelError(ModdepError):
    """A call into the running kernel failed; ``errno`` is the error number."""

    def __init__(self, message: str, errno: int = 0, path: Optional[str] = None) -> None:
        super().__init__(message, path)
        self.errno = errno
