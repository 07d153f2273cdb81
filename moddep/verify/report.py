"""verify's reports: text for people (grouped, with counts), JSON, and JUnit XML for CI.

JUnit layout (the shape Jenkins' ``junit-10.xsd`` and Ant's ``JUnit.xsd`` describe, which
GitLab, GitHub actions and others read): one ``<testsuite>`` per check group (indexes,
symbols, modules, dependencies, firmware); in ``indexes`` one test case per index file, in the
others one test case per finding, or one passing case per check that found nothing. Findings
at or above ``--fail-on`` are ``<failure>`` elements (``type`` is the finding code), others
are printed in the case's ``<system-out>``; checks that could not run are ``<skipped>``.
"""

from __future__ import annotations

import json
import re
import socket
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Optional

from moddep.verify.findings import CHECKS, GROUPS, INDEXES, SEVERITIES, Finding, at_least
from moddep.verify.run import IDENTICAL, Result

# a finding of the first code means the checks of the second could not run
SKIPS = {"symbols-not-checked": ("crc-mismatch",), "firmware-not-checked": ("firmware-missing",)}
_PLURAL = {"error": "errors", "warning": "warnings", "info": "infos"}


def counts(result: Result) -> dict[str, int]:
    return {s: result.count(s) for s in SEVERITIES}


def failed(result: Result, fail_on: str) -> list[Finding]:
    """Findings at or above the threshold (``error``, ``warning`` or ``never``)."""
    return [f for f in result.findings if at_least(f.severity, fail_on)]


def _count_text(n: int, severity: str) -> str:
    return f"{n} {severity if n == 1 else _PLURAL[severity]}"


# -- text -------------------------------------------------------------------------------------

def text(result: Result, fail_on: str = "error") -> str:
    """The report for people."""
    lines = [f"moddep verify: {result.moddir}",
             f"  kernel {result.kver}, {result.modules} modules; expected: kmod "
             f"{result.kmod_version}'s depmod output"
             + (f" ({result.generation_reason})" if result.generation_reason else ""),
             f"  kernel symbols: {result.kernel or 'none found'}"]
    lines += [f"  note: {n}" for n in result.notes]
    by_status: dict[str, int] = {}
    for fr in result.files:
        by_status[fr.status] = by_status.get(fr.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in by_status.items()) or "none"
    if not result.compared:
        summary = "not compared (depmod refuses this tree)" + \
            (f"; on disk: {summary}" if result.files else "")
    lines += ["", "index files: " + summary]
    for fr in result.files:
        if fr.status != IDENTICAL:
            lines.append(f"  {fr.name:<27} {fr.status}")
    c = counts(result)
    lines += ["", "findings: " + ", ".join(_count_text(c[s], s) for s in SEVERITIES)]
    for sev in SEVERITIES:
        codes: dict[str, list[Finding]] = {}
        for f in result.findings:
            if f.severity == sev:
                codes.setdefault(f.code, []).append(f)
        for code, group in codes.items():
            lines.append(f"{sev}: {code} ({len(group)})")
            for f in group:
                lines.append(f"  {f.module + ': ' if f.module else ''}{f.message}")
                lines += [f"      {d}" for d in f.details]
    bad = failed(result, fail_on)
    verdict = (f"FAIL: {len(bad)} findings at or above --fail-on {fail_on}" if bad else
               f"PASS (--fail-on {fail_on})")
    lines += ["", f"result: {verdict}; {result.seconds:.1f}s"]
    return "\n".join(lines) + "\n"


# -- JSON -------------------------------------------------------------------------------------

def to_json(result: Result, fail_on: str = "error") -> str:
    doc = {
        "moddir": result.moddir, "kernel_version": result.kver,
        "kmod_version": result.kmod_version, "generation_reason": result.generation_reason,
        "modules": result.modules, "kernel_symbols": result.kernel,
        "firmware_dirs": result.firmware_dirs, "notes": result.notes,
        "files": [fr.to_json() for fr in result.files],
        "findings": [f.to_json() for f in result.findings],
        "counts": counts(result), "fail_on": fail_on,
        "result": "fail" if failed(result, fail_on) else "pass",
        "seconds": round(result.seconds, 3),
    }
    return json.dumps(doc, indent=2) + "\n"


# -- JUnit ------------------------------------------------------------------------------------

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _x(s: str) -> str:
    """Text XML 1.0 can hold: undecodable bytes and control characters as escapes."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()) & 0xFF:02x}", s)


def _finding_text(f: Finding) -> str:
    return _x("\n".join([f"{f.severity}: {f.code}: {f.message}", *f.details]))


class _Suite:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cases: list[ET.Element] = []
        self.failures = 0
        self.skipped = 0
        self.out: list[str] = []  # findings below the threshold, for the suite's system-out

    def case(self, name: str, classname: str, failures: list[Finding], passed: list[Finding],
             skipped: Optional[str] = None) -> None:
        """One test case; Ant's schema allows at most one failure (or skipped) element, so
        several failing findings of one case share it."""
        tc = ET.Element("testcase", name=_x(name), classname=classname, time="0.000")
        if failures:
            first = failures[0]
            message = first.message if len(failures) == 1 else \
                f"{len(failures)} findings: " + "; ".join(f.message for f in failures)
            el = ET.SubElement(tc, "failure", message=_x(message), type=first.code)
            el.text = "\n\n".join(_finding_text(f) for f in failures)
            self.failures += 1
        elif skipped is not None:
            ET.SubElement(tc, "skipped", message=_x(skipped))
            self.skipped += 1
        self.out += [f"{name}: {_finding_text(f)}" for f in passed]
        self.cases.append(tc)


def junit(result: Result, fail_on: str = "error", timestamp: Optional[datetime] = None,
          hostname: Optional[str] = None) -> str:
    """The report as JUnit XML (see the module documentation)."""
    stamp = (timestamp or datetime.now()).strftime("%Y-%m-%dT%H:%M:%S")
    host = hostname or socket.gethostname() or "localhost"
    suites = {g: _Suite(g) for g in GROUPS}
    skipped_codes: dict[str, str] = {}
    for f in result.findings:
        for code in SKIPS.get(f.code, ()):
            skipped_codes[code] = f.message

    def split(fs_: list[Finding]) -> tuple[list[Finding], list[Finding]]:
        return ([f for f in fs_ if at_least(f.severity, fail_on)],
                [f for f in fs_ if not at_least(f.severity, fail_on)])

    idx = suites[INDEXES]
    for fr in result.files:
        mine = [f for f in result.findings if f.group == INDEXES and f.file == fr.name]
        bad, ok = split(mine)
        idx.case(fr.name, f"moddep.verify.{INDEXES}", bad, ok,
                 skipped="not compared: depmod refuses this tree"
                 if fr.status == "not compared" else None)
    if not result.compared and not result.files:
        idx.case("index files", f"moddep.verify.{INDEXES}", [], [],
                 skipped="not compared: depmod refuses this tree")
    for f in result.findings:
        if f.group == INDEXES and not any(fr.name == f.file for fr in result.files):
            bad, ok = split([f])
            idx.case(f.file or f.code, f"moddep.verify.{INDEXES}", bad, ok)
    for code, check in CHECKS.items():
        if check.group == INDEXES or code in SKIPS:
            continue
        suite = suites[check.group]
        mine = [f for f in result.findings if f.code == code]
        for f in mine:
            bad, ok = split([f])
            suite.case(f.subject, f"moddep.verify.{check.group}.{code}", bad, ok)
        if not mine:
            suite.case(check.title, f"moddep.verify.{check.group}.{code}", [], [],
                       skipped=skipped_codes.get(code))

    # testsuites carries no attribute: Ant's schema allows none (Jenkins' would allow some)
    root = ET.Element("testsuites")
    for i, g in enumerate(GROUPS):
        s = suites[g]
        el = ET.SubElement(root, "testsuite", name=g, tests=str(len(s.cases)),
                           failures=str(s.failures), errors="0", skipped=str(s.skipped),
                           time=f"{result.seconds if i == 0 else 0:.3f}", timestamp=stamp,
                           hostname=_x(host), id=str(i), package="moddep.verify")
        props = ET.SubElement(el, "properties")
        for k, v in (("moddir", result.moddir), ("kernel_version", result.kver),
                     ("kmod_version", str(result.kmod_version)), ("fail_on", fail_on),
                     ("kernel_symbols", result.kernel or "")):
            ET.SubElement(props, "property", name=k, value=_x(v))
        el.extend(s.cases)
        ET.SubElement(el, "system-out").text = "\n".join(s.out)
        ET.SubElement(el, "system-err").text = ""
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


FORMATS = {"text": text, "json": to_json, "junit": junit}
