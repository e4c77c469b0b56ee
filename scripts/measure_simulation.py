#!/usr/bin/env python3
"""Rules alone against simulated campaigns: `korvid simulate` for several seeds, `korvid scan`
on what it wrote, and the findings matched to the ground truth.

Findings are taken per window (`korvid scan --per-window`). A finding at medium or above matches
an attack step when it cites one of the step's requests (`sample_event_ids`), or, for findings
about object state, when its subject is one of the entities the step acted on (not its actor). A step is detected when a finding of its own tactic matches it; a campaign when any finding
matches any of its steps. Medium+ findings that match no attack step
are false alerts (those touching a labelled benign action are counted apart).

    python3 scripts/measure_simulation.py [path/to/korvid] [seeds]
"""

import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

LOUD = {"medium", "high", "critical"}


def subject_id(f):
    s = f["subject"]
    return f"{s['kind']}/{s.get('namespace') or ''}/{s['name']}"


def matches(f, label):
    """A finding belongs to a labelled action when it cites one of the action's requests, or,
    for findings about object state (no requests cited), when its subject is one of the
    action's entities."""
    ev = f.get("evidence") or {}
    cited = set(filter(None, ev.get("sample_event_ids", "").split(",")))
    if cited:
        return bool(cited & set(label.get("audit_ids", [])))
    # Object state: only what the action created or acted on, not the identity acting (whose
    # standing findings would otherwise match every later step).
    acting = label.get("actor") or ""
    if acting.startswith("system:serviceaccount:"):
        _, _, ns, name = acting.split(":", 3)
        acting = f"ServiceAccount/{ns}/{name}"
    return subject_id(f) in set(label["entities"]) - {acting}


def run(korvid, seed, workdir):
    out = Path(workdir) / f"seed-{seed}"
    subprocess.run([korvid, "simulate", "--seed", str(seed), "--out", str(out), "--campaigns", "6",
                    "--duration", "1800"], check=True, capture_output=True)
    res = subprocess.run([korvid, "scan", "--format", "json", "--fail-on", "none", "--per-window",
                          str(out / "cluster.json"), str(out / "audit.log"), str(out / "scans")],
                         capture_output=True, text=True, env={"KORVID__TELEMETRY__LISTEN": ""})
    if res.returncode not in (0, 1):
        raise SystemExit(res.stderr)
    labels = [json.loads(l) for l in (out / "labels.jsonl").read_text().splitlines()]
    return json.loads(res.stdout or "[]"), labels


def main():
    korvid = sys.argv[1] if len(sys.argv) > 1 else "target/release/korvid"
    seeds = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "1,2,3,4,5").split(",")]
    by_tactic = collections.defaultdict(lambda: [0, 0])
    campaigns = [0, 0]
    false_alerts = benign_touching = loud_total = 0
    false_subjects = set()
    missed = collections.Counter()
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            findings, labels = run(korvid, seed, d)
            loud = [f for f in findings if f["severity"] in LOUD]
            loud_total += len(loud)
            attacks = [l for l in labels if l["malicious"]]
            benign = [l for l in labels if not l["malicious"]]
            detected = collections.defaultdict(bool)
            for step in attacks:
                related = [f for f in loud if matches(f, step)]
                # A step counts as detected by a finding of its own tactic; any related finding
                # counts for its campaign.
                hit = any(f["tactic"] == step["tactic"] for f in related)
                by_tactic[step["tactic"]][0] += hit
                by_tactic[step["tactic"]][1] += 1
                detected[step["campaign"]] |= bool(related)
                if not hit:
                    missed[step["technique"]] += 1
            campaigns[0] += sum(detected.values())
            campaigns[1] += len(detected)
            for f in loud:
                if not any(matches(f, s) for s in attacks):
                    false_alerts += 1
                    false_subjects.add((seed, f["rule_id"], subject_id(f)))
                    benign_touching += any(matches(f, b) for b in benign)
    steps = [sum(v[0] for v in by_tactic.values()), sum(v[1] for v in by_tactic.values())]
    print(f"seeds {seeds}: {steps[1]} attack steps in {campaigns[1]} campaigns; {loud_total} medium+ findings")
    for tactic, (hit, total) in sorted(by_tactic.items()):
        print(f"  {tactic:<22} step recall {hit}/{total} ({100 * hit / max(total, 1):.0f}%)")
    print(f"step recall {steps[0]}/{steps[1]} ({100 * steps[0] / max(steps[1], 1):.0f}%), "
          f"campaign recall {campaigns[0]}/{campaigns[1]} ({100 * campaigns[0] / max(campaigns[1], 1):.0f}%)")
    print(f"false alerts (medium+ window findings matching no attack step): {false_alerts} "
          f"({len(false_subjects)} distinct rule/subject pairs), {benign_touching} of them on labelled benign actions")
    top = collections.Counter(rule for _, rule, _ in false_subjects).most_common(8)
    print(f"false rule/subject pairs by rule: {dict(top)}")
    print(f"missed steps by technique: {dict(missed)}")


if __name__ == "__main__":
    main()
