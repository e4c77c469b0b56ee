#!/usr/bin/env python3
"""Measures `korvid scan` against the falco k8saudit test traces (read in place).

Cases falco expects to alert at WARNING or above should give a korvid finding at medium or
above; cases it expects to stay silent should give nothing above low. Cases that depend on
falco's custom rule files (allow, deny and trust lists, a JSON-pointer demo) are
reported apart: korvid has no equivalent list for them.

    python3 scripts/measure_falco.py ../shared/corpora/falco-k8saudit [path/to/korvid]
"""

import json
import subprocess
import sys
from pathlib import Path

LEVELS = ["DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def findings(korvid, trace):
    out = subprocess.run([korvid, "scan", "--format", "json", "--fail-on", "none", str(trace)],
                         capture_output=True, text=True, env={"KORVID__TELEMETRY__LISTEN": ""})
    if out.returncode not in (0, 1):
        raise SystemExit(f"korvid scan {trace} failed: {out.stderr}")
    return json.loads(out.stdout or "[]")


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora/falco-k8saudit")
    korvid = sys.argv[2] if len(sys.argv) > 2 else "target/debug/korvid"
    alert_hit = alert_total = quiet_ok = quiet_total = 0
    custom = 0
    for line in (root / "INDEX.jsonl").read_text().splitlines():
        case = json.loads(line)
        if any(c != "engine_v4_k8s_audit_rules.yaml" for c in case["needs_custom_rules"]):
            custom += 1
            continue
        found = findings(korvid, root / case["trace"])
        top = max((RANK[f["severity"]] for f in found), default=-1)
        level = case["detect_level"]
        if case["detect"] and level and LEVELS.index(level) >= LEVELS.index("WARNING"):
            alert_total += 1
            hit = top >= RANK["medium"]
            alert_hit += hit
            if not hit:
                print(f"missed  {case['test']}: {case['trace']} {sorted(case['expected_rule_counts'])}")
        elif not case["detect"]:
            quiet_total += 1
            ok = top <= RANK["low"]
            quiet_ok += ok
            if not ok:
                print(f"noisy   {case['test']}: {case['trace']} -> {sorted({f['rule_id'] for f in found if RANK[f['severity']] > 0})}")
    print(f"alert cases (WARNING+): korvid medium+ on {alert_hit}/{alert_total} ({100 * alert_hit / max(alert_total, 1):.0f}%)")
    print(f"no-detect cases: korvid low or silent on {quiet_ok}/{quiet_total} ({100 * quiet_ok / max(quiet_total, 1):.0f}%)")
    print(f"left out (need falco's custom rule files): {custom}")


if __name__ == "__main__":
    main()
