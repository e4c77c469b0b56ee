#!/usr/bin/env python3
"""Measures `korvid scan` against the gatekeeper-library pod-security-policy samples.

For each sample in the corpus index: a disallowed sample counts as found when korvid reports a
finding of a rule mapped to that policy; an allowed sample counts as clean when it reports none
of them. Policies without a mapped rule are listed as not covered. The corpus is read in place.

Each sample is judged under its constraint's parameters, as a team would set korvid up for the
same policy: the exemptions and allowances a constraint grants (exempt images, allowed host path
prefixes, allowed host port ranges, host networking allowed) become a korvid exceptions file
given to `korvid scan --exceptions`.

    python3 scripts/measure_gatekeeper.py ../shared/corpora/gatekeeper-library [path/to/korvid]
"""

import json
import subprocess
import sys
import tempfile

import yaml
from collections import defaultdict
from pathlib import Path

# Which korvid rules judge what each gatekeeper policy forbids.
RULES = {
    "pod-security-policy/privileged-containers": {"KOR-0101"},
    "pod-security-policy/host-filesystem": {"KOR-0102", "KOR-0103", "KOR-0113"},
    "pod-security-policy/host-namespaces": {"KOR-0104"},
    "pod-security-policy/host-network-ports": {"KOR-0104", "KOR-0109"},
    "pod-security-policy/capabilities": {"KOR-0105"},
    "pod-security-policy/allow-privilege-escalation": {"KOR-0108"},
    "pod-security-policy/users": {"KOR-0108"},
    "pod-security-policy/read-only-root-filesystem": {"KOR-0114"},
    "pod-security-policy/seccomp": {"KOR-0115"},
    "pod-security-policy/seccompv2": {"KOR-0115"},
    "pod-security-policy/apparmor": {"KOR-0116"},
    "pod-security-policy/selinux": {"KOR-0117"},
    "pod-security-policy/proc-mount": {"KOR-0118"},
    "pod-security-policy/forbidden-sysctls": {"KOR-0119"},
    "pod-security-policy/host-process": {"KOR-0120"},
    "pod-security-policy/host-probes-lifecycle": {"KOR-0121"},
    "pod-security-policy/volumes": {"KOR-0122", "KOR-0102", "KOR-0113"},
    "pod-security-policy/flexvolume-drivers": {"KOR-0122"},
}


def exceptions(constraint, rules):
    """The korvid exceptions that grant what a gatekeeper constraint's parameters allow."""
    params = (constraint.get("spec") or {}).get("parameters") or {}
    out = []

    def grant(name, match, only=None):
        out.append({"name": name, "rules": sorted(only or rules), "match": match,
                    "owner": "gatekeeper-constraint", "reason": f"allowed by {constraint['kind']}"})

    images = params.get("exemptImages") or []
    if images:
        grant("exempt-images", {"image": images})
    prefixes = params.get("allowedHostPaths") or []
    for i, p in enumerate(prefixes):
        prefix = p["pathPrefix"].rstrip("/")
        paths = [prefix or "/", f"{prefix}/*"]
        # Read-only mounts are allowed under any listed prefix; writable ones only where the
        # prefix does not demand read-only.
        grant(f"host-path-{i}-read-only", {"host_path": paths, "read_only": ["true"]})
        if not p.get("readOnly"):
            grant(f"host-path-{i}", {"host_path": paths})
    if "min" in params or "max" in params:
        grant("host-ports", {"container_port": [{"min": params.get("min"), "max": params.get("max")}]},
              {"KOR-0109"} & rules)
    if params.get("hostNetwork") is True:
        grant("host-network", {"host_network": ["true"], "host_pid": ["false"], "host_ipc": ["false"]},
              {"KOR-0104"} & rules)
    return [e for e in out if e["rules"]]


def scan(korvid, path, excepted=()):
    args = []
    if excepted:
        f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        json.dump({"exceptions": list(excepted)}, f)  # JSON is YAML
        f.close()
        args = ["--exceptions", f.name]
    out = subprocess.run(
        [korvid, "scan", "--format", "json", "--fail-on", "none", *args, str(path)],
        capture_output=True, text=True, env={"KORVID__TELEMETRY__LISTEN": "", "PATH": "/usr/bin:/bin"},
    )
    if excepted:
        Path(args[1]).unlink()
    if out.returncode not in (0, 1):
        raise SystemExit(f"korvid scan {path} failed ({out.returncode}): {out.stderr}")
    return {f.get("rule_id") for f in json.loads(out.stdout or "[]")}


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora/gatekeeper-library")
    korvid = sys.argv[2] if len(sys.argv) > 2 else "target/debug/korvid"
    tally = defaultdict(lambda: [0, 0, 0, 0])  # found, disallowed, clean, allowed
    uncovered = defaultdict(int)
    for line in (root / "INDEX.jsonl").read_text().splitlines():
        case = json.loads(line)
        policy = case["policy"]
        if not policy.startswith("pod-security-policy/"):
            continue
        rules = RULES.get(policy)
        if rules is None:
            uncovered[policy] += 1
            continue
        constraint = yaml.safe_load((root / case["constraint"]).read_text())
        hits = scan(korvid, root / case["object"], exceptions(constraint, rules)) & rules
        t = tally[policy]
        if case["violation_expected"]:
            t[1] += 1
            t[0] += bool(hits)
        else:
            t[3] += 1
            t[2] += not hits
    total = [sum(t[i] for t in tally.values()) for i in range(4)]
    for policy, (found, bad, clean, good) in sorted(tally.items()):
        print(f"{policy:<52} disallowed found {found}/{bad}   allowed clean {clean}/{good}")
    print(f"covered policies: disallowed found {total[0]}/{total[1]} ({100 * total[0] / max(total[1], 1):.0f}%), "
          f"allowed clean {total[2]}/{total[3]} ({100 * total[2] / max(total[3], 1):.0f}%)")
    print(f"not covered yet: {sum(uncovered.values())} samples in {', '.join(sorted(p.split('/')[1] for p in uncovered))}")


if __name__ == "__main__":
    main()
