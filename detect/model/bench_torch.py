#!/usr/bin/env python3
"""PyTorch eager inference of korvid's graph model on the inputs `cargo bench --bench model`
wrote, batched the same way, on the same number of threads; prints it beside the ONNX Runtime
figures of that run, with the ratio. `make bench-model` runs both.

    python detect/model/bench_torch.py target/bench-model [--device cuda] [--markdown FILE]

--markdown appends the comparison to FILE as a BENCHMARKS.md section (`make bench` does).
"""

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import KorvidGNN  # noqa: E402

HERE = Path(__file__).resolve().parent


def read_inputs(path, features):
    data = path.read_bytes()
    at = 0
    sets = []
    while at < len(data):
        count, per_batch = struct.unpack_from("<II", data, at)
        at += 8
        graphs = []
        for _ in range(count):
            n, e = struct.unpack_from("<II", data, at)
            at += 8
            x = np.frombuffer(data, np.float32, n * features, at).reshape(n, features)
            at += 4 * n * features
            ints = np.frombuffer(data, np.int64, 3 * e, at)
            at += 8 * 3 * e
            graphs.append((x, ints[:e], ints[e:2 * e], ints[2 * e:]))
        sets.append((graphs[0][0].shape[0], per_batch, graphs))
    return sets


def union(graphs, device):
    xs, src, dst, rel, offset = [], [], [], [], 0
    for x, s, d, r in graphs:
        xs.append(x)
        src.append(s + offset)
        dst.append(d + offset)
        rel.append(r)
        offset += x.shape[0]
    return (torch.from_numpy(np.concatenate(xs)).to(device),
            torch.from_numpy(np.stack([np.concatenate(src), np.concatenate(dst)])).to(device),
            torch.from_numpy(np.concatenate(rel)).to(device))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", type=Path, help="append the table to this file")
    args = ap.parse_args()
    ort = json.loads((args.dir / "ort.json").read_text())
    threads = ort["threads"]
    torch.set_num_threads(threads)
    state = torch.load(HERE / "korvid-gnn.pt", map_location="cpu")
    features = state["embed.0.weight"].shape[1]
    relations = state["layers.0.relation.weight"].shape[0] // 2
    tactics = state["tactic_head.weight"].shape[0]
    model = KorvidGNN(features, relations, tactics).eval()
    model.load_state_dict(state)
    model.to(args.device)
    sets = read_inputs(args.dir / "model-inputs.bin", features)
    print(f"PyTorch {torch.__version__} eager on {args.device}, {threads} threads; "
          "ONNX Runtime figures from the same run")
    print(f"{'entities':>8} {'per batch':>9} {'torch graphs/s':>15} {'torch p99 ms':>13} "
          f"{'ort graphs/s':>13} {'ort p99 ms':>11} {'ort/torch':>10}")
    rows = []
    for (n, per_batch, graphs), o in zip(sets, ort["ort"]):
        batches = [union(graphs[i:i + per_batch], args.device)
                   for i in range(0, len(graphs), per_batch)]
        with torch.no_grad():
            model(*batches[0])
            lat, done, started = [], 0, time.perf_counter()
            while time.perf_counter() - started < 4 or len(lat) < 20:
                for b, size in zip(batches, [min(per_batch, len(graphs) - i)
                                             for i in range(0, len(graphs), per_batch)]):
                    t = time.perf_counter()
                    out = model(*b)
                    if args.device != "cpu":
                        torch.cuda.synchronize()
                    lat.append((time.perf_counter() - t) * 1e3)
                    done += size
                    del out
            rate = done / (time.perf_counter() - started)
        p99 = float(np.percentile(lat, 99))
        ratio = o["run_graphs_per_s"] / rate
        print(f"{n:>8} {per_batch:>9} {rate:>15.1f} {p99:>13.2f} {o['run_graphs_per_s']:>13.1f} "
              f"{o['run_p99_ms']:>11.2f} {ratio:>9.2f}x")
        rows.append({"entities": n, "per_batch": per_batch, "torch_graphs_per_s": rate,
                     "torch_p99_ms": p99, "ort": o, "ratio": ratio})
    (args.dir / "torch.json").write_text(json.dumps({"device": args.device, "rows": rows}))
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write(markdown(rows, threads, args.device))


def markdown(rows, threads, device):
    """The BENCHMARKS.md section: ONNX Runtime (korvid's detect) beside PyTorch eager."""
    lines = [
        "",
        "## detect.model (`cargo bench --bench model` + `detect/model/bench_torch.py`)",
        "",
        f"The graph model on window-shaped graphs, batched as detect batches them (disjoint unions "
        f"up to the batch budgets), {threads} threads. korvid: ONNX Runtime through `Model::run`, "
        f"one batch at a time. Baseline: PyTorch {torch.__version__} eager ({device}) on the same "
        f"inputs and batches, same run. Ratio: korvid time per graph / baseline time per graph.",
        "",
        "| entities per window | windows per batch | korvid graphs/s | korvid p99 batch ms "
        "| baseline graphs/s | baseline p99 batch ms | korvid time / baseline time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["ort"]
        lines.append(f"| {r['entities']} | {r['per_batch']} | {o['run_graphs_per_s']:.0f} "
                     f"| {o['run_p99_ms']:.1f} | {r['torch_graphs_per_s']:.0f} "
                     f"| {r['torch_p99_ms']:.1f} | {1 / r['ratio']:.2f} |")
    lines.append("")
    lines.append("- Through detect's `Batcher` with every window submitted at once: " + "; ".join(
        f"{r['entities']} entities {r['ort']['batcher_graphs_per_s']:.0f} graphs/s, "
        f"p99 submit-to-answer {r['ort']['batcher_p99_ms']:.0f} ms" for r in rows) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
