"""
The tables (one per scenario, a column per target, and wslb's ratios to
direct and to HAProxy), issue 4's targets checked against the same run, and
the profile summaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Per scenario: row label, result key, number format, whether wslb's
#: ratios to direct and HAProxy mean something for it.
ROWS: dict[str, list[tuple[str, str, str, bool]]] = {
    "S1": [
        ("delivered msg/s", "deliveredPerS", "int", True),
        ("offered msg/s", "offeredPerS", "int", False),
        ("latency p50 ms", "latencyP50Ms", "ms", True),
        ("latency p99 ms", "latencyP99Ms", "ms", True),
        ("latency max ms", "latencyMaxMs", "ms", True),
        ("LB CPU µs/msg", "lbCpuUsPerMessage", "us", True),
        ("LB CPU % of core", "lbCpuPercent", "pct", True),
        ("LB's core busy %", "lbCoresBusyPercent", "pct", False),
        ("LB RSS before MB", "lbRssBeforeKB", "mb", True),
        ("LB peak RSS MB", "lbPeakRssKB", "mb", True),
        ("KB per idle conn", "kbPerConnection", "kb", True),
        ("connect errors", "connectErrors", "int", False),
        ("generator CPU %", "generatorSidePercent", "pct", False),
        ("others' CPU %", "otherProcessesPercent", "pct", False),
    ],
    "S2": [
        ("delivered msg/s", "deliveredPerS", "int", True),
        ("delivered MB/s", "megabytesPerS", "f1", True),
        ("LB CPU µs/msg", "lbCpuUsPerMessage", "us2", True),
        ("LB CPU % of core", "lbCpuPercent", "pct", True),
        ("LB's core busy %", "lbCoresBusyPercent", "pct", False),
        ("LB peak RSS MB", "lbPeakRssKB", "mb", True),
        ("generator CPU %", "generatorSidePercent", "pct", False),
        ("others' CPU %", "otherProcessesPercent", "pct", False),
    ],
    "S3": [
        ("handshakes/s", "handshakesPerS", "int", True),
        ("connections open", "open", "int", False),
        ("errors", "errors", "int", False),
        ("handshake p50 ms", "handshakeP50Ms", "ms", True),
        ("handshake p99 ms", "handshakeP99Ms", "ms", True),
        ("LB CPU µs/handshake", "lbCpuUsPerHandshake", "us", True),
        ("LB CPU % of core", "lbCpuPercent", "pct", True),
        ("LB's core busy %", "lbCoresBusyPercent", "pct", False),
        ("KB per open conn", "kbPerConnection", "kb", True),
        ("LB peak RSS MB", "lbPeakRssKB", "mb", True),
        ("listen overflows", "listenOverflows", "int", False),
        ("generator CPU %", "generatorSidePercent", "pct", False),
        ("others' CPU %", "otherProcessesPercent", "pct", False),
    ],
    "S4": [
        ("round trips/s", "roundTripsPerS", "int", True),
        ("RTT p50 ms", "rttP50Ms", "ms", True),
        ("RTT p99 ms", "rttP99Ms", "ms", True),
        ("LB CPU µs/round trip", "lbCpuUsPerRoundTrip", "us", True),
        ("LB CPU % of core", "lbCpuPercent", "pct", True),
        ("LB's core busy %", "lbCoresBusyPercent", "pct", False),
        ("LB peak RSS MB", "lbPeakRssKB", "mb", True),
        ("generator CPU %", "generatorSidePercent", "pct", False),
        ("others' CPU %", "otherProcessesPercent", "pct", False),
    ],
}

TITLES = {
    "S1": "S1 fan-out: {s1_clients} clients x {s1_rate:g} msg/s of ~150-byte quotes",
    "S2": "S2 flood: {s2_clients} clients, backends send as fast as the path drains",
    "S3": "S3 connection storm: {s3_connections} connections, "
    "{s3_concurrency} handshakes in flight",
    "S4": "S4 echo: {s4_clients} clients, one round trip at a time each",
}

_FORMATS: dict[str, Callable[[float], str]] = {
    "int": lambda v: f"{v:,.0f}",
    "ms": lambda v: f"{v:.2f}" if v < 100 else f"{v:,.0f}",
    "us": lambda v: f"{v:.1f}",
    "us2": lambda v: f"{v:.2f}",
    "pct": lambda v: f"{v:.0f}",
    "mb": lambda v: f"{v / 1024:.1f}",
    "kb": lambda v: f"{v:.1f}",
    "f1": lambda v: f"{v:.1f}",
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ratio(a: Any, b: Any) -> str:
    if _number(a) and _number(b) and b:
        return f"{a / b:.2f}x"
    return "-"


def renderTables(
    results: dict[str, dict[str, dict[str, Any]]], targets: list[str], settings: Any
) -> str:
    columns = list(targets)
    if "wslb" in targets and "direct" in targets:
        columns.append("wslb/direct")
    if "wslb" in targets and "haproxy" in targets:
        columns.append("wslb/haproxy")
    out: list[str] = []
    for scenario, byTarget in results.items():
        out += ["", TITLES[scenario].format(**vars(settings))]
        rows = [["", *columns]]
        for label, key, kind, ratios in ROWS[scenario]:
            row = [label]
            for target in targets:
                result = byTarget.get(target, {})
                if "skipped" in result or "error" in result:
                    row.append("skipped" if "skipped" in result else "error")
                else:
                    value: Any = result.get(key)
                    row.append(_FORMATS[kind](value) if _number(value) else "-")
            wslb = byTarget.get("wslb", {}).get(key)
            for reference in ("direct", "haproxy"):
                if f"wslb/{reference}" in columns:
                    other = byTarget.get(reference, {}).get(key)
                    row.append(_ratio(wslb, other) if ratios else "")
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
        for n, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            out.append(("  " + "  ".join(cells)).rstrip())
            if n == 0:
                out.append("  " + "  ".join("-" * width for width in widths))
        for target in targets:
            result = byTarget.get(target, {})
            if "skipped" in result:
                note = "skipped: " + result["skipped"]
            elif "error" in result:
                note = "error: " + result["error"]
            else:
                note = result.get("bound", "-")
            out.append(f"  {target}: {note}")
    return "\n".join(out)


def targetChecks(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    Issue 4's targets for wslb, each against HAProxy or direct in this run.
    """

    def get(scenario: str, target: str, key: str) -> Any:
        return results.get(scenario, {}).get(target, {}).get(key)

    checks: list[dict[str, Any]] = []

    def check(
        name: str,
        scenario: str,
        key: str,
        reference: str,
        goal: str,
        passes: Callable[[float, float], bool],
        unit: str,
    ) -> None:
        wslb, other = get(scenario, "wslb", key), get(scenario, reference, key)
        if _number(wslb) and _number(other):
            checks.append(
                {
                    "target": name,
                    "goal": goal,
                    "wslb": wslb,
                    "reference": reference,
                    "referenceValue": other,
                    "unit": unit,
                    "met": passes(wslb, other),
                }
            )

    check("S1 LB CPU per message", "S1", "lbCpuUsPerMessage", "haproxy",
          "<= 1.25x HAProxy", lambda w, h: w <= 1.25 * h, "µs")  # fmt: skip
    check("S2 LB CPU per message", "S2", "lbCpuUsPerMessage", "haproxy",
          "<= 2x HAProxy", lambda w, h: w <= 2 * h, "µs")  # fmt: skip
    check("memory per connection (S1)", "S1", "kbPerConnection", "haproxy",
          "<= HAProxy", lambda w, h: w <= h, "KB")  # fmt: skip
    check("handshakes/s (S3)", "S3", "handshakesPerS", "haproxy",
          ">= 0.9x HAProxy", lambda w, h: w >= 0.9 * h, "/s")  # fmt: skip
    check("S1 p99 latency", "S1", "latencyP99Ms", "direct",
          "within 5 ms of direct", lambda w, d: w <= d + 5, "ms")  # fmt: skip
    return checks


def renderChecks(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return ""
    lines = ["", "Issue 4 targets for wslb, against the same run:"]
    for c in checks:
        verdict = "met   " if c["met"] else "MISSED"
        ratio = _ratio(c["wslb"], c["referenceValue"])
        lines.append(
            f"  {verdict} {c['target']}: {c['wslb']:.2f} {c['unit']} vs "
            f"{c['reference']} {c['referenceValue']:.2f} {c['unit']} ({ratio}); "
            f"goal {c['goal']}"
        )
    return "\n".join(lines)


def renderProfiles(profiles: dict[str, Any], rows: int = 12) -> str:
    lines = []
    for name, summary in profiles.items():
        lines += [
            "",
            f"py-spy profile of wslb in {name}: {summary['samples']} samples "
            f"(raw stacks in {summary['raw']})",
            "  self:",
        ]
        lines += [
            f"    {share:5.1f}%  {frame}" for frame, share in summary["self"][:rows]
        ]
        lines.append("  inclusive:")
        inclusive = summary["inclusive"][:rows]
        lines += [f"    {share:5.1f}%  {frame}" for frame, share in inclusive]
    return "\n".join(lines)
