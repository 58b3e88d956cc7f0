#!/usr/bin/env python3
"""Helpers of benches/resync/run.sh.

  report.py veth NETNS IFACE              print "RX TX" byte counters of IFACE in NETNS
  report.py rsync-stats FILE              rsync --stats output -> JSON object on stdout
  report.py last-json FILE                the last JSON object in FILE -> stdout (exit 1 if none)
  report.py case FILE key=value...        write one case as JSON (values parsed as JSON when
                                          they are, `key=@path` embeds the JSON file at path)
  report.py meta FILE key=value...        write the run's description (same value syntax)
  report.py summarize OUT                 OUT/cases/*.json -> OUT/results.json, OUT/report.md,
                                          and print the table

Each case: tool, percent, rep, size_bytes, seconds (wall time measured by the script),
wire_bytes (rx+tx of site A's veth, so everything on the link, headers included),
tool_bytes (what the tool itself says it moved), differing_bytes (changed 4 KiB blocks x
4096), digest_bytes_estimate = size/1MiB*16 + (1 MiB regions holding a change)*256*16,
verified (destination == source afterwards).
"""

import json
import os
import re
import statistics
import subprocess
import sys

MIB = 1 << 20
TIME_TARGET = 1 / 3  # sitrep time <= 1/3 of rsync's
WIRE_TARGET = 1.1  # wire bytes <= 1.1 x (differing + digests)


def veth(ns: str, iface: str) -> None:
    out = subprocess.run(
        ["ip", "-n", ns, "-s", "-j", "link", "show", iface],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    s = json.loads(out)[0]["stats64"]
    print(s["rx"]["bytes"], s["tx"]["bytes"])


def rsync_stats(path: str) -> None:
    text = open(path).read()
    keys = {
        "Number of regular files transferred": "files_transferred",
        "Total file size": "total_file_size",
        "Total transferred file size": "transferred_file_size",
        "Literal data": "literal_data",
        "Matched data": "matched_data",
        "Total bytes sent": "bytes_sent",
        "Total bytes received": "bytes_received",
    }
    res = {}
    for label, key in keys.items():
        m = re.search(re.escape(label) + r":\s*([\d,.]+)", text)
        if m:
            res[key] = int(m.group(1).replace(",", "").replace(".", ""))
    json.dump(res, sys.stdout)
    print()


def last_json(path: str) -> int:
    text = open(path).read()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            json.dump(doc, sys.stdout)
            print()
            return 0
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                json.dump(json.loads(line), sys.stdout)
                print()
                return 0
            except ValueError:
                continue
    return 1


def parse_value(v: str):
    if v.startswith("@"):
        try:
            with open(v[1:]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
    try:
        return json.loads(v)
    except ValueError:
        return v


def parse_pairs(pairs: list) -> dict:
    res = {}
    for p in pairs:
        k, _, v = p.partition("=")
        res[k] = parse_value(v)
    return res


def write_meta(path: str, pairs: list) -> None:
    with open(path, "w") as f:
        json.dump(parse_pairs(pairs), f, indent=2)
        f.write("\n")


def write_case(path: str, pairs: list) -> None:
    case = parse_pairs(pairs)
    size = case["size_bytes"]
    digest = size // MIB * 16 + case.get("fine_blocks", 0) * 16
    case["digest_bytes_estimate"] = digest
    wire = case.get("wire_bytes")
    if isinstance(wire, int):
        case["wire_per_needed"] = wire / (case["differing_bytes"] + digest)
    with open(path, "w") as f:
        json.dump(case, f, indent=2)
        f.write("\n")


def human(n) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit, div in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def summarize(out: str) -> None:
    cdir = os.path.join(out, "cases")
    cases = []
    for name in sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []:
        if name.endswith(".json"):
            with open(os.path.join(cdir, name)) as f:
                cases.append(json.load(f))
    cases.sort(key=lambda c: (c["percent"], c["rep"], c["tool"] != "rsync", c["tool"]))
    base = {
        (c["percent"], c["rep"]): c["seconds"]
        for c in cases
        if c["tool"] == "rsync" and c.get("seconds")
    }
    for c in cases:
        b = base.get((c["percent"], c["rep"]))
        c["time_vs_rsync"] = c["seconds"] / b if b and c.get("seconds") else None
        own = (c.get("tool_report") or {}).get("seconds") if c["tool"] == "sitrep" else None
        c["own_seconds"] = own if isinstance(own, (int, float)) else None
        c["own_time_vs_rsync"] = own / b if b and c["own_seconds"] else None
        if c["tool"] == "sitrep":
            c["time_target_met"] = (
                c["time_vs_rsync"] <= TIME_TARGET if c["time_vs_rsync"] is not None else None
            )
            wpn = c.get("wire_per_needed")
            c["wire_target_met"] = wpn <= WIRE_TARGET if wpn is not None else None
    meta = {}
    if os.path.exists(os.path.join(out, "meta.json")):
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"run": meta, "time_target": TIME_TARGET, "wire_target": WIRE_TARGET,
                   "cases": cases}, f, indent=2)
        f.write("\n")

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "—"

    lines = [
        "| tool | differing | size | rep | seconds | × rsync time "
        "| sitrep: own / restart → done / → applied (s) "
        "| wire bytes (veth) | tool-reported bytes | differing bytes | digest estimate "
        "| wire ÷ (differing + digests) | dst == src |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        ratio = c.get("time_vs_rsync")
        restart = (
            f"{num(c.get('own_seconds'), '.1f')} / "
            f"{num(c.get('seconds_from_restart'), '.1f')} / "
            f"{num(c.get('seconds_until_applied'), '.1f')}"
            if c["tool"] == "sitrep"
            else "—"
        )
        label = c["tool"]
        if isinstance(c.get("rsync_args"), str) and c["rsync_args"].strip():
            label = f"rsync `{c['rsync_args'].strip()}`"
        lines.append(
            f"| {label} | {c['percent']:g} % | {human(c['size_bytes'])} | {c['rep']} "
            f"| {num(c.get('seconds'), '.1f')} "
            f"| {num(ratio, '.2f') + '×' if ratio is not None else '—'} | {restart} "
            f"| {human(c.get('wire_bytes'))} | {human(c.get('tool_bytes'))} "
            f"| {human(c['differing_bytes'])} | {human(c['digest_bytes_estimate'])} "
            f"| {num(c.get('wire_per_needed'), '.2f')} "
            f"| {'yes' if c.get('verified') else 'NO'} |"
        )
    reps = {c["rep"] for c in cases}
    if len(reps) > 1:
        lines += ["", "Medians over reps:", "",
                  "| tool | differing | seconds | × rsync time | wire bytes (veth) |",
                  "|---|---|---|---|---|"]
        groups = {}
        for c in cases:
            if isinstance(c.get("seconds"), (int, float)):
                groups.setdefault((c["tool"], c["percent"]), []).append(c)
        for (tool, pct), cs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rs = [c["time_vs_rsync"] for c in cs if c.get("time_vs_rsync") is not None]
            med_r = f"{statistics.median(rs):.2f}×" if rs else "—"
            lines.append(
                f"| {tool} | {pct:g} % | {statistics.median(c['seconds'] for c in cs):.1f} "
                f"| {med_r} | {human(statistics.median(c['wire_bytes'] for c in cs))} |"
            )
    notes = [c for c in cases if c.get("notes")]
    if notes:
        lines += [""] + [f"- {c['tool']} {c['percent']:g} % rep {c['rep']}: {c['notes']}"
                         for c in notes]
    floors = [c for c in cases if isinstance(c.get("io_floor_seconds"), (int, float))]
    if floors:
        lines += [
            "",
            "I/O floor (both images of a pair read cold at once by `cat`, no tool; both sites "
            "share this machine's disk): "
            + ", ".join(f"{c['io_floor_seconds']:.1f} s (before {c['tool']} {c['percent']:g} % "
                        f"rep {c['rep']})" for c in floors)
            + ".",
        ]
    lines += [
        "",
        "seconds: wall time of `rsync` / of `sitrep resync NAME --now --json` (the agent, "
        "started with `--resync-window always`, begins the resync itself on restart; "
        "\"own\" is the resync's `seconds` in that JSON, \"restart → done\" also counts the "
        "agent's start, \"→ applied\" the `sitrep wait` after it too). Tool-reported bytes: rsync's total bytes sent + received; "
        "sitrep's `wire_bytes` (frames the agent wrote, A → B). Wire bytes (veth): rx + tx of "
        "site A's veth, both directions, headers included.",
    ]
    for c in cases:
        if c["tool"] == "sitrep":
            t, w = c.get("time_target_met"), c.get("wire_target_met")
            r, o = c.get("time_vs_rsync"), c.get("own_time_vs_rsync")
            lines.append(
                f"- sitrep {c['percent']:g} % rep {c['rep']}: time target "
                f"{'met' if t else 'NOT met' if t is not None else 'unknown (no rsync run)'}"
                + (f" ({r:.2f}× by the command's wall time, {o:.2f}× by its own seconds)"
                   if r is not None and o is not None else "")
                + ", "
                f"wire target {'met' if w else 'NOT met' if w is not None else 'unknown'}"
                + (
                    f"; CPU from restart to done: agent {c['agent_cpu_seconds']:.1f} s, "
                    f"server {c['server_cpu_seconds']:.1f} s"
                    if isinstance(c.get("agent_cpu_seconds"), (int, float))
                    and isinstance(c.get("server_cpu_seconds"), (int, float))
                    else ""
                )
            )
    lines += [
        "",
        f"Targets: sitrep time ≤ {TIME_TARGET:.2f} × rsync's; sitrep wire bytes ≤ "
        f"{WIRE_TARGET} × (differing bytes + digests), digests estimated as size/1 MiB × 16 B "
        "+ 256 × 16 B per 1 MiB region holding a change.",
    ]
    if meta:
        lines += [
            "",
            "Run: " + ", ".join(f"{k} {v}" for k, v in meta.items() if v not in ("", None)) + ".",
        ]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(table)
    print(table, end="")


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "veth" and len(args) == 2:
        veth(*args)
    elif cmd == "rsync-stats" and len(args) == 1:
        rsync_stats(args[0])
    elif cmd == "last-json" and len(args) == 1:
        return last_json(args[0])
    elif cmd == "case" and args:
        write_case(args[0], args[1:])
    elif cmd == "meta" and args:
        write_meta(args[0], args[1:])
    elif cmd == "summarize" and len(args) == 1:
        summarize(args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
