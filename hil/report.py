"""The rig's verdicts: a table a person reads, and JUnit XML a CI reads."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from hil.rig import ERROR, FAIL, PASS, SKIP, Result


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


def table(results: list[Result], verbose: bool = False) -> str:
    """One line per scenario, then one per check, with the times measured."""
    lines = []
    width = max([len(r.scenario) for r in results] + [8])
    lines.append(f"{'SCENARIO'.ljust(width)}  {'RESULT':8}  {'TIME':>7}  DETAIL")
    lines.append("-" * (width + 40))
    for r in results:
        lines.append(f"{r.scenario.ljust(width)}  {r.status:8}  {r.duration_s:6.1f}s  {r.reason}")
        for check in r.checks:
            mark = {PASS: "ok", FAIL: "FAIL", SKIP: "skip"}.get(check.status, check.status)
            detail = f"  ({check.detail})" if check.detail and (verbose or check.counted or check.status != PASS) else ""
            lines.append(f"{''.ljust(width)}    {mark:5} {_ms(check.measured_ms):>9}  {check.name}{detail}")
        for note in r.notes if verbose or r.status != PASS else []:
            lines.append(f"{''.ljust(width)}    note: {note}")
        if r.status in (FAIL, ERROR):
            if r.workdir:
                lines.append(f"{''.ljust(width)}    kept for a look: {r.workdir}")
            if r.agent_log_tail and verbose:
                lines.append("    agent log (last lines):")
                lines.extend("      " + line for line in r.agent_log_tail.splitlines())
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, ERROR, SKIP)}
    lines.append("-" * (width + 40))
    lines.append(", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    return "\n".join(lines)


def junit(results: list[Result], path: str | Path) -> None:
    """JUnit XML: one testsuite, one testcase per scenario, checks listed in system-out."""
    suite = ET.Element("testsuite", name="gate-agent-hil", tests=str(len(results)),
                       failures=str(sum(r.status == FAIL for r in results)),
                       errors=str(sum(r.status == ERROR for r in results)),
                       skipped=str(sum(r.status == SKIP for r in results)),
                       time=f"{sum(r.duration_s for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="hil", name=r.scenario, time=f"{r.duration_s:.3f}")
        if r.status == FAIL:
            failed = [c for c in r.checks if c.status == FAIL]
            ET.SubElement(case, "failure", message=r.reason).text = "\n".join(
                f"{c.name}: {c.detail}" for c in failed)
        elif r.status == ERROR:
            ET.SubElement(case, "error", message=r.reason).text = r.agent_log_tail
        elif r.status == SKIP:
            ET.SubElement(case, "skipped", message=r.reason)
        out = [f"{c.status} {_ms(c.measured_ms)} {c.name} {c.detail}".strip() for c in r.checks]
        out += [f"note: {n}" for n in r.notes]
        ET.SubElement(case, "system-out").text = "\n".join(out)
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
