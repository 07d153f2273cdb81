"""Shared pieces of the verify/why/graph/diff tests: synthetic module trees, in-process CLI
runs, fault injection into hard-linked copies, and a JUnit XML schema check.

The JUnit check encodes the rules of the two schemas CI systems validate against, taking the
stricter of each: Ant's ``JUnit.xsd`` (the windyroad schema most tools cite) and Jenkins'
``junit-10.xsd`` (xunit-plugin). Root ``<testsuites>`` with no attributes (Ant allows none);
each ``<testsuite>`` with name, tests, failures, errors, time, timestamp (ISO 8601 without a
zone), hostname, id and package (Ant's aggregated form), children in the order properties,
testcase*, system-out, system-err; each ``<testcase>`` with name, classname and a decimal
time, and at most one child among skipped/error/failure; failure and error carry a ``type``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kofactory import Module
from synth import KVER, make_tree

from moddep.cli import main

VERMAGIC = f"{KVER} SMP mod_unload modversions ".encode()


def mod(exports: list[bytes] = (), needs: list[bytes] = (), *, crcs: dict[bytes, int] = None,
        versions: dict[bytes, int] = None, weak: list[bytes] = (),
        vermagic: Optional[bytes] = VERMAGIC, **info: list[bytes]) -> bytes:  # type: ignore
    """A synthetic module: exports (CRC 0x1000+i unless ``crcs`` says), needed symbols
    (``versions``: their __versions CRCs), modinfo (``vermagic`` first; keyword lists)."""
    crcs = crcs or {}
    modinfo = [(b"vermagic", vermagic)] if vermagic is not None else []
    for key, values in info.items():
        modinfo += [(key.encode(), v) for v in values]
    return Module(exports=[(e, crcs.get(e, 0x1000 + i)) for i, e in enumerate(exports)],
                  undefined=[(n, False) for n in needs] + [(n, True) for n in weak],
                  versions=list((versions or {}).items()), modinfo=modinfo).build()


def tree(root: Path, modules: dict[str, bytes], *, order: Optional[bytes] = None,
         **kw: Optional[bytes]) -> Path:
    """make_tree with a modules.order listing every module (unless given)."""
    if order is None:
        order = b"".join(f"{rel}\n".encode() for rel in modules if not rel.startswith("/"))
    return make_tree(root, modules, order=order, **kw)  # type: ignore[arg-type]


@dataclass
class Run:
    rc: int
    out: str
    err: str


def cli(*argv: str) -> Run:
    """``moddep ARGV`` in-process, stdout and stderr captured."""
    out, err = io.BytesIO(), io.StringIO()
    wrapper = io.TextIOWrapper(out, write_through=True)
    with contextlib.redirect_stdout(wrapper), contextlib.redirect_stderr(err):
        rc = main(["moddep", *argv])
    wrapper.flush()
    return Run(rc, out.getvalue().decode("utf-8", "surrogateescape"), err.getvalue())


def depmod(root: Path, kver: str = KVER, kmod: int = 34) -> None:
    run = cli("depmod", "--no-cache", "--kmod-version", str(kmod), "-b", str(root), kver)
    assert run.rc == 0, run.err


def replace_file(path: Path, data: bytes) -> None:
    """Give ``path`` new content without writing into a (possibly hard-linked) file."""
    tmp = path.with_name(path.name + ".inject")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def patch_file(path: Path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of ``old`` by ``new`` (same length) in a copy of the file."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times in {path}"
    replace_file(path, data.replace(old, new))


def install_symvers(root: Path, kver: str, text: bytes) -> None:
    """A headers package: /usr/src/linux-headers-KVER/Module.symvers and the module dir's
    ``build`` link to it (absolute, as Debian ships it: it must resolve inside the root)."""
    src = root / "usr" / "src" / f"linux-headers-{kver}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "Module.symvers").write_bytes(text)
    moddirs = [d / kver for d in (root / "lib" / "modules", root / "usr" / "lib" / "modules")]
    moddir = next(d for d in moddirs if d.is_dir())
    os.symlink(f"/usr/src/linux-headers-{kver}", moddir / "build")


def findings(doc: dict, *, severities: tuple[str, ...] = ("error", "warning", "info")
             ) -> list[tuple[str, str, Optional[str], str]]:
    """(severity, code, module, message) of a JSON report, in report order."""
    return [(f["severity"], f["code"], f.get("module"), f["message"]) for f in doc["findings"]
            if f["severity"] in severities]


# -- JUnit ------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\Z")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?\Z")
_INT = re.compile(r"-?[0-9]+\Z")
SUITE_REQUIRED = ("name", "tests", "failures", "errors", "time", "timestamp", "hostname", "id",
                  "package")
SUITE_ALLOWED = set(SUITE_REQUIRED) | {"skipped", "group", "file", "log", "url"}
CASE_ALLOWED = {"name", "classname", "time", "group"}


def check_junit(text: str) -> ET.Element:
    """Parse and check a JUnit report against the schema rules above; returns the root."""
    root = ET.fromstring(text)
    assert root.tag == "testsuites" and not root.attrib, root.attrib
    assert len(root), "no testsuite"
    for i, suite in enumerate(root):
        assert suite.tag == "testsuite"
        attrs = suite.attrib
        missing = [a for a in SUITE_REQUIRED if a not in attrs]
        assert not missing, f"testsuite lacks {missing}"
        assert set(attrs) <= SUITE_ALLOWED, set(attrs) - SUITE_ALLOWED
        assert attrs["name"].strip() and attrs["hostname"].strip()
        for a in ("tests", "failures", "errors", "skipped", "id"):
            if a in attrs:
                assert _INT.match(attrs[a]), (a, attrs[a])
        assert attrs["id"] == str(i)
        assert _DECIMAL.match(attrs["time"]) and _TIMESTAMP.match(attrs["timestamp"])
        tags = [c.tag for c in suite]
        assert tags[0] == "properties" and tags[-2:] == ["system-out", "system-err"], tags
        assert set(tags[1:-2]) <= {"testcase"}, tags
        for prop in suite[0]:
            assert prop.tag == "property" and set(prop.attrib) == {"name", "value"}
            assert prop.attrib["name"].strip()
        cases = suite.findall("testcase")
        failures = skipped = 0
        for case in cases:
            assert set(case.attrib) <= CASE_ALLOWED
            assert case.attrib["name"].strip() and case.attrib["classname"].strip()
            assert _DECIMAL.match(case.attrib["time"])
            kids = list(case)
            assert len(kids) <= 1, [k.tag for k in kids]
            for k in kids:
                assert k.tag in ("skipped", "error", "failure")
                if k.tag in ("error", "failure"):
                    assert k.attrib.get("type"), "failure/error needs a type"
                    assert set(k.attrib) <= {"type", "message"}
                else:
                    assert set(k.attrib) <= {"type", "message"}
            failures += sum(1 for k in kids if k.tag == "failure")
            skipped += sum(1 for k in kids if k.tag == "skipped")
        assert int(attrs["tests"]) == len(cases)
        assert int(attrs["failures"]) == failures
        assert int(attrs.get("skipped", "0")) == skipped
        assert int(attrs["errors"]) == sum(1 for c in cases for k in c if k.tag == "error")
        for tag in ("system-out", "system-err"):
            assert not list(suite.find(tag))  # text only
    return root


def failing_cases(root: ET.Element) -> dict[str, list[tuple[str, str]]]:
    """suite -> [(test case name, failure type)] of the failing cases."""
    out: dict[str, list[tuple[str, str]]] = {}
    for suite in root:
        for case in suite.findall("testcase"):
            f = case.find("failure")
            if f is not None:
                out.setdefault(suite.attrib["name"], []).append(
                    (case.attrib["name"], f.attrib["type"]))
    return out
