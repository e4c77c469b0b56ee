#!/usr/bin/env python3
"""`korvid scan` against checkov (a peer static scanner for Kubernetes manifests) on the same
1,000 manifests, in the same run: wall time and peak memory of each.

The manifests are built from the Kubernetes objects in ../shared/corpora (KubeHound's attack
cluster and gatekeeper-library's pod samples), read in place and written to a temporary
directory with unique names, one object per file.

    python3 scripts/bench_scan_vs_checkov.py [korvid binary] [checkov binary] [count]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml  # PyYAML comes with checkov's environment

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
SOURCES = [CORPORA / "kubehound" / "test-cluster" / "attacks",
           CORPORA / "gatekeeper-library" / "library" / "pod-security-policy"]

MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)
"""


def objects():
    for src in SOURCES:
        for path in sorted(src.rglob("*.yaml")):
            try:
                for doc in yaml.safe_load_all(path.read_text()):
                    if isinstance(doc, dict) and doc.get("kind") and doc.get("metadata", {}).get("name") \
                            and not doc["kind"].startswith("K8s") and "constraints.gatekeeper.sh" not in str(doc.get("apiVersion")):
                        yield doc
            except yaml.YAMLError:
                continue


def measure(cmd):
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, check=True)
    secs, kib, rc = out.stdout.split()
    return float(secs), int(kib) / 1024, int(rc)


def main():
    korvid = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/release/korvid")
    checkov = sys.argv[2] if len(sys.argv) > 2 else str(Path.home() / ".cache/korvid/checkov-venv/bin/checkov")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    pool = list(objects())
    if not pool:
        raise SystemExit(f"no manifests found under {CORPORA}")
    with tempfile.TemporaryDirectory() as d:
        for i in range(count):
            obj = json.loads(json.dumps(pool[i % len(pool)]))
            obj["metadata"]["name"] = f"{obj['metadata']['name']}-{i}"
            Path(d, f"m{i:04}.yaml").write_text(yaml.safe_dump(obj))
        k_secs, k_mb, k_rc = measure([korvid, "scan", "--format", "json", "--fail-on", "none", d])
        c_secs, c_mb, c_rc = measure([checkov, "-d", d, "--framework", "kubernetes", "--quiet", "--compact", "-o", "json"])
    print(f"{count} manifests ({len(pool)} distinct objects from the corpora)")
    print(f"korvid scan : {k_secs:6.2f} s  {k_mb:7.1f} MB peak  (exit {k_rc})")
    print(f"checkov     : {c_secs:6.2f} s  {c_mb:7.1f} MB peak  (exit {c_rc})")
    print(f"korvid is {c_secs / k_secs:.1f}x faster with {k_mb / c_mb:.2f}x the memory")


if __name__ == "__main__":
    main()
