#!/usr/bin/env python3
"""Findings at medium or above per 10,000 benign audit events (perfspec-benign-audit, read in
place): its Logstash CSV is turned back into audit events (JSON lines in a temporary file) and
given to `korvid scan`.

    python3 scripts/measure_perfspec.py ../shared/corpora/perfspec-benign-audit [path/to/korvid]
"""

import collections
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def events(path):
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 12:
                continue
            _, ts, user, verb, resource, sub, name, _, uri, audit_id, stage, code = row[:12]
            ns = uri.split("/namespaces/")[1].split("/")[0].split("?")[0] if "/namespaces/" in uri else None
            ref = {"resource": resource or None, "namespace": ns, "name": name or None, "subresource": sub or None}
            yield {
                "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                "auditID": audit_id, "stage": stage or "ResponseComplete", "requestURI": uri,
                "verb": verb, "user": {"username": user},
                "objectRef": {k: v for k, v in ref.items() if v},
                "responseStatus": {"code": int(code) if code.isdigit() else 200},
                "stageTimestamp": ts,
            }


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora/perfspec-benign-audit")
    korvid = sys.argv[2] if len(sys.argv) > 2 else "target/debug/korvid"
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as out:
        n = 0
        for e in events(root / "audit-logs.csv"):
            out.write(json.dumps(e) + "\n")
            n += 1
    res = subprocess.run([korvid, "scan", "--format", "json", "--fail-on", "none", out.name],
                         capture_output=True, text=True, env={"KORVID__TELEMETRY__LISTEN": ""})
    Path(out.name).unlink()
    if res.returncode not in (0, 1):
        raise SystemExit(res.stderr)
    found = json.loads(res.stdout or "[]")
    loud = [f for f in found if f["severity"] in ("medium", "high", "critical")]
    by_rule = collections.Counter(f["rule_id"] for f in loud)
    print(f"{n} benign events: {len(loud)} findings at medium or above "
          f"= {10000 * len(loud) / max(n, 1):.2f} per 10,000 events; by rule: {dict(by_rule)}")
    print(f"all findings: {len(found)} ({dict(collections.Counter(f['severity'] for f in found))})")


if __name__ == "__main__":
    main()
