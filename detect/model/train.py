#!/usr/bin/env python3
"""Trains korvid's graph model and measures it against two baselines.

One command (see README.md in this folder):

    python detect/model/train.py --korvid target/release/korvid --work /tmp/korvid-model

Steps, each skipped when its output is already in --work:
  1. `korvid simulate` for every seed of every split (held-out techniques left out of the
     training and validation seeds, and simulated alone for their own test split);
  2. `korvid model featurize` per split (detect's own feature code; rule hits are features);
  3. training: the relational GNN (PyTorch, batches built by PyTorch Geometric as disjoint
     unions), the graph-free baseline (gradient-boosted trees on the same node features) and
     the rules-alone baseline (the rules' own medium-or-louder findings);
  4. thresholds for fusing the model with the rules, chosen on the validation seeds;
  5. the report (held-out seeds, held-out techniques), the ONNX export (opset 18) with the
     fusion thresholds in its metadata, the parity fixture for the Rust test, MODEL.md.
"""

import argparse
import hashlib
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

import torch_geometric
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

HERE = Path(__file__).resolve().parent
HELD_OUT = [
    "credential_access.token-request",
    "persistence.mutating-webhook",
    "lateral_movement.port-forward",
]
SPLITS = {
    "train": list(range(1, 13)),
    "val": [13, 14, 15],
    "test": [101, 102, 103, 104, 105],
    "heldout": [201, 202, 203],
}
SIM_ARGS = ["--campaigns", "6", "--duration", "1800"]
LOUD = {"medium", "high", "critical"}
SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


# --------------------------------------------------------------------------- data

def simulate_and_featurize(korvid, work):
    sims = work / "sims"
    for split, seeds in SPLITS.items():
        out = work / "tables" / split
        if (out / "windows.parquet").exists():
            continue
        dirs = []
        for seed in seeds:
            d = sims / f"{split}-{seed}"
            if not (d / "labels.jsonl").exists():
                extra = []
                for t in HELD_OUT:
                    extra += (["--only", t] if split == "heldout" else ["--exclude", t])
                subprocess.run([korvid, "simulate", "--seed", str(seed), "--out", str(d)]
                               + SIM_ARGS + extra, check=True, stdout=subprocess.DEVNULL)
            dirs.append(str(d))
        subprocess.run([korvid, "model", "featurize", "--out", str(out)] + dirs, check=True,
                       env={"KORVID__TELEMETRY__LISTEN": "", "PATH": "/usr/bin:/bin"})


class Split:
    """One split's tables as numpy arrays, nodes grouped by window (rows are in window order)."""

    def __init__(self, folder, layout):
        nodes = pq.read_table(folder / "nodes.parquet")
        edges = pq.read_table(folder / "edges.parquet")
        windows = pq.read_table(folder / "windows.parquet").to_pydict()
        findings = pq.read_table(folder / "findings.parquet").to_pydict()
        self.features = layout["features"]
        self.tactics = layout["tactics"]
        self.x = np.stack([nodes.column(f).to_numpy() for f in self.features], 1).astype(np.float32)
        self.malicious = nodes.column("malicious").to_numpy(zero_copy_only=False).astype(bool)
        self.y_tactic = np.stack([nodes.column(f"label_{t}").to_numpy(zero_copy_only=False)
                                  for t in self.tactics], 1).astype(bool)
        self.node_id = nodes.column("node_id").to_pylist()
        self.campaigns = nodes.column("campaigns").to_pylist()
        self.techniques = nodes.column("techniques").to_pylist()
        self.lookalike = nodes.column("lookalike").to_numpy(zero_copy_only=False).astype(bool)
        self.sim_of_row = nodes.column("sim").to_pylist()
        self.keys = [f"{s}|{w}" for s, w in zip(windows["sim"], windows["window_id"])]
        self.kind = windows["kind"]
        counts = np.array(windows["nodes"], dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.count = counts
        ecounts = np.array(windows["edges"], dtype=np.int64)
        self.estart = np.concatenate([[0], np.cumsum(ecounts)[:-1]])
        self.ecount = ecounts
        self.src = edges.column("src").to_numpy().astype(np.int64)
        self.dst = edges.column("dst").to_numpy().astype(np.int64)
        self.rel = edges.column("relation").to_numpy().astype(np.int64)
        # Rule findings, by global node row.
        key_index = {k: i for i, k in enumerate(self.keys)}
        self.rule_hits = []  # (row, tactic index, severity rank, rule id)
        for s, w, node, tactic, sev, rule in zip(findings["sim"], findings["window_id"],
                                                findings["node"], findings["tactic"],
                                                findings["severity"], findings["rule_id"]):
            if node < 0:
                continue
            row = int(self.start[key_index[f"{s}|{w}"]]) + node
            self.rule_hits.append((row, self.tactics.index(tactic), SEVERITY_RANK[sev], rule))
        self.window_of_row = np.repeat(np.arange(len(self.keys)), counts)
        self.benign_windows = int(sum(
            1 for i in range(len(self.keys))
            if not self.malicious[self.start[i]:self.start[i] + self.count[i]].any()))

    def graph(self, i):
        a, n = self.start[i], self.count[i]
        e0, e = self.estart[i], self.ecount[i]
        return Data(
            x=torch.from_numpy(self.x[a:a + n]),
            edge_index=torch.from_numpy(np.stack([self.src[e0:e0 + e], self.dst[e0:e0 + e]])),
            edge_type=torch.from_numpy(self.rel[e0:e0 + e]),
            y=torch.from_numpy(self.malicious[a:a + n].astype(np.float32)),
            yt=torch.from_numpy(self.y_tactic[a:a + n].astype(np.float32)),
            num_nodes=int(n),
        )

    def interesting(self):
        """Windows with an attack, a rule hit or a labelled look-alike."""
        hit_windows = {int(self.window_of_row[r]) for r, *_ in self.rule_hits}
        out = []
        for i in range(len(self.keys)):
            a, n = self.start[i], self.count[i]
            if (i in hit_windows or self.malicious[a:a + n].any()
                    or self.lookalike[a:a + n].any()):
                out.append(i)
        return out


# --------------------------------------------------------------------------- model

class RelationalLayer(nn.Module):
    """Message passing over typed edges: a message is the source's state composed with a
    learned embedding of the relation (both directions of every relation are distinct types);
    each node takes the mean and the max of its messages beside its own state."""

    def __init__(self, hidden, relations):
        super().__init__()
        self.message = nn.Linear(hidden, hidden)
        self.relation = nn.Embedding(relations, hidden)
        self.own = nn.Linear(hidden, hidden)
        self.combine = nn.Linear(3 * hidden, hidden)

    def forward(self, h, src, dst, rel):
        msg = torch.relu(self.message(h)[src] + self.relation(rel))
        index = dst.unsqueeze(-1).expand_as(msg)
        total = torch.zeros_like(h).scatter_add(0, index, msg)
        degree = torch.zeros_like(h[:, :1]).scatter_add(0, dst.unsqueeze(-1),
                                                         torch.ones_like(msg[:, :1]))
        mean = total / degree.clamp(min=1.0)
        # Messages are >= 0 (ReLU), so a zero start is the max of none.
        peak = torch.zeros_like(h).scatter_reduce(0, index, msg, reduce="amax", include_self=True)
        return torch.relu(self.combine(torch.cat([self.own(h), mean, peak], -1)))


class KorvidGNN(nn.Module):
    """Per-node tactic scores and a risk score for a window graph (or a disjoint union)."""

    def __init__(self, features, relations, tactics, hidden=64, layers=2):
        super().__init__()
        self.relations = relations
        self.embed = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.layers = nn.ModuleList(RelationalLayer(hidden, 2 * relations) for _ in range(layers))
        self.tactic_head = nn.Linear(hidden, tactics)
        self.risk_head = nn.Linear(hidden, 1)

    def logits(self, x, edge_index, edge_type):
        src = torch.cat([edge_index[0], edge_index[1]])
        dst = torch.cat([edge_index[1], edge_index[0]])
        rel = torch.cat([edge_type, edge_type + self.relations])
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer(h, src, dst, rel)
        return self.tactic_head(h), self.risk_head(h).squeeze(-1)

    def forward(self, x, edge_index, edge_type):
        tactics, risk = self.logits(x, edge_index, edge_type)
        return torch.sigmoid(tactics), torch.sigmoid(risk)


def train_gnn(model, train, val, epochs, seed):
    torch.manual_seed(seed)
    random.seed(seed)
    idx = train.interesting()
    chosen = set(idx)
    rest = [i for i in range(len(train.keys)) if i not in chosen]
    rng = random.Random(seed)
    graphs_all = [train.graph(i) for i in idx]
    pos = float(train.malicious.sum())
    pos_weight = torch.tensor(min(50.0, (len(train.malicious) - pos) / max(pos, 1.0)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    risk_loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    tactic_loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    best, best_state = -1.0, None
    for epoch in range(epochs):
        model.train()
        quiet = [train.graph(i) for i in rng.sample(rest, min(len(rest), len(idx) // 2))]
        loader = DataLoader(graphs_all + quiet, batch_size=128, shuffle=True)
        t0, total = time.time(), 0.0
        for batch in loader:
            tl, rl = model.logits(batch.x, batch.edge_index, batch.edge_type)
            loss = risk_loss(rl, batch.y) + tactic_loss(tl, batch.yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        ap = average_precision(val.malicious, predict(model, val)[1])
        print(f"  epoch {epoch + 1}: loss {total / len(loader):.4f}, "
              f"val AP {ap:.3f} ({time.time() - t0:.0f} s)", flush=True)
        if ap > best:
            best, best_state = ap, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


@torch.no_grad()
def predict(model, split, batch_size=256):
    model.eval()
    tactics = np.zeros((len(split.x), len(split.tactics)), np.float32)
    risk = np.zeros(len(split.x), np.float32)
    graphs = [split.graph(i) for i in range(len(split.keys))]
    row = 0
    for batch in DataLoader(graphs, batch_size=batch_size):
        t, r = model(batch.x, batch.edge_index, batch.edge_type)
        n = len(r)
        tactics[row:row + n] = t.numpy()
        risk[row:row + n] = r.numpy()
        row += n
    return tactics, risk


def average_precision(y, score):
    order = np.argsort(-score)
    y = y[order]
    hits = np.cumsum(y)
    precision = hits / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / max(y.sum(), 1))


# --------------------------------------------------------------------------- systems

def rules_alone(split):
    """Alerts: (row, tactic, detector) for every medium-or-louder rule finding."""
    return {(r, t, rule) for r, t, sev, rule in split.rule_hits if sev >= 1}


def state_only(rule):
    """Whether a rule judges object state (the inventory rules, KOR-01xx) rather than activity:
    detect lowers only those (`RuleEngine::is_state_only`)."""
    return rule.startswith("KOR-01")


def fused(split, risk, tactic_scores, low, high):
    """The fusion detect runs (detect/src/model/fusion.rs): a medium/high finding of a
    state rule on an entity the model scores below `low` is lowered to low (no alert);
    critical ones and activity findings stay; an entity scored at or above `high` with no loud
    rule finding gets a model finding with its most likely tactic."""
    out = set()
    loud_rows = set()
    for r, t, sev, rule in split.rule_hits:
        if sev < 1:
            continue
        loud_rows.add(r)
        if sev >= 3 or risk[r] >= low or not state_only(rule):
            out.add((r, t, rule))
    for r in np.nonzero(risk >= high)[0]:
        if int(r) not in loud_rows:
            out.add((int(r), int(np.argmax(tactic_scores[r])), "model"))
    return out


def per_node(split, flagged, tactic_scores, threshold):
    """Alerts of the graph-free baseline: entity rows at or above the threshold."""
    return {(int(r), int(np.argmax(tactic_scores[r])), "gbt")
            for r in np.nonzero(flagged >= threshold)[0]}


def evaluate(split, alerts):
    tactics = split.tactics
    per_tactic = {}
    for k, name in enumerate(tactics):
        predicted = {r for r, t, _ in alerts if t == k}
        truth = set(np.nonzero(split.y_tactic[:, k])[0].tolist())
        tp = len(predicted & truth)
        p = tp / len(predicted) if predicted else 0.0
        rc = tp / len(truth) if truth else float("nan")
        f1 = 2 * p * rc / (p + rc) if p + rc > 0 and truth else (float("nan") if not truth else 0.0)
        per_tactic[name] = {"precision": p, "recall": rc, "f1": f1, "support": len(truth)}
    flagged_rows = {r for r, _, _ in alerts}
    mal_rows = set(np.nonzero(split.malicious)[0].tolist())
    campaigns = {(split.sim_of_row[r], c) for r in mal_rows for c in split.campaigns[r].split(",") if c}
    found = {(split.sim_of_row[r], c) for r in flagged_rows & mal_rows
             for c in split.campaigns[r].split(",") if c}
    false_rows = [(r, t, d) for r, t, d in alerts if not split.malicious[r]]
    # Distinct false alerts, as notify would deduplicate them: (sim, tactic, detector, subject).
    distinct = {(split.sim_of_row[r], t, d, split.node_id[r]) for r, t, d in false_rows}
    lookalike = {(split.sim_of_row[r], t, d, split.node_id[r]) for r, t, d in false_rows
                 if split.lookalike[r]}
    return {
        "per_tactic": per_tactic,
        "entity_recall": len(flagged_rows & mal_rows) / max(len(mal_rows), 1),
        "campaign_recall": [len(found), len(campaigns)],
        "false_alerts": len(distinct),
        "false_alerts_on_lookalikes": len(lookalike),
        "false_alert_windows_per_1000_benign": 1000.0 * len({split.window_of_row[r] for r, _, _ in false_rows})
        / max(split.benign_windows, 1),
        "alerts": len(alerts),
    }


def choose_thresholds(val, risk, tactics):
    """The (low, high) pair with the fewest false alerts whose entity and campaign recall are
    at least the rules' on the validation seeds."""
    base = evaluate(val, rules_alone(val))
    best = None
    for low in [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]:
        for high in [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.01]:
            m = evaluate(val, fused(val, risk, tactics, low, high))
            if (m["entity_recall"] >= base["entity_recall"]
                    and m["campaign_recall"][0] >= base["campaign_recall"][0]):
                key = (m["false_alerts"], -m["entity_recall"])
                if best is None or key < best[0]:
                    best = (key, low, high)
    if best is None:
        return 0.0, 1.01  # the rules unchanged: nothing better keeps their recall
    return best[1], best[2]


def train_baseline(train, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier

    idx = train.interesting()
    rows = np.concatenate([np.arange(train.start[i], train.start[i] + train.count[i]) for i in idx])
    # Every attack row and a quarter of the rest (class weights make up for it): the same
    # model at a quarter of the cost on 2 cores.
    keep = train.malicious[rows] | (np.random.default_rng(seed).random(len(rows)) < 0.25)
    rows = rows[keep]
    x = train.x[rows]
    risk = HistGradientBoostingClassifier(max_iter=200, random_state=seed, class_weight="balanced")
    risk.fit(x, train.malicious[rows])
    positives = rows[train.malicious[rows]]
    tactic = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    tactic.fit(train.x[positives], train.y_tactic[positives].argmax(1))
    return risk, tactic


def baseline_scores(models, split):
    risk_model, tactic_model = models
    risk = risk_model.predict_proba(split.x)[:, 1]
    scores = np.zeros((len(split.x), len(split.tactics)), np.float32)
    proba = tactic_model.predict_proba(split.x)
    for j, cls in enumerate(tactic_model.classes_):
        scores[:, cls] = proba[:, j]
    return risk, scores


def choose_baseline_threshold(val, risk, tactics):
    base = evaluate(val, rules_alone(val))
    best = None
    for th in [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995]:
        m = evaluate(val, per_node(val, risk, tactics, th))
        if m["entity_recall"] >= base["entity_recall"]:
            key = m["false_alerts"]
            if best is None or key < best[0]:
                best = (key, th)
    return best[1] if best else 0.5


# --------------------------------------------------------------------------- export

def rows_scatter_as_scatternd(graph):
    """Rewrites the layer's row scatters into ScatterND. The exporter turns
    `zeros.scatter_add(0, dst.unsqueeze(-1).expand_as(msg), msg)` into ScatterElements over an
    [edges, hidden] index tensor (Expand materialises it; for `scatter_reduce` it sits behind an
    If), which ONNX Runtime runs element by element; ScatterND with the [edges, 1] index
    updates whole rows: the same result (the parity test checks it against PyTorch) in a
    fraction of the time. Returns how many nodes were rewritten."""
    producers = {o: n for n in graph.node for o in n.output}

    def unsqueezed(name):
        source = producers.get(name)
        return source is not None and source.op_type == "Unsqueeze"

    def to_scatternd(n, rows):
        n.op_type = "ScatterND"
        n.input[1] = rows
        reduction = [a for a in n.attribute if a.name == "reduction"]
        del n.attribute[:]
        n.attribute.extend(reduction)

    scatters = [n for n in graph.node if n.op_type == "ScatterElements"
                and next((a.i for a in n.attribute if a.name == "axis"), 0) == 0]
    rewritten = 0
    for n in scatters:
        index = producers.get(n.input[1])
        if index is not None and index.op_type == "Expand" and unsqueezed(index.input[0]):
            to_scatternd(n, index.input[0])
            rewritten += 1
        elif index is not None and index.op_type == "Unsqueeze":
            # The degree count: an [edges, 1] index on rows one wide, as ScatterND wants it.
            to_scatternd(n, n.input[1])
            rewritten += 1
    for n in scatters:
        # scatter_reduce's inputs pass through an If (a reshape for rank-0 inputs, else the
        # tensors as they are): take them from the else branch.
        branch = producers.get(n.input[1])
        if n.op_type != "ScatterElements" or branch is None or branch.op_type != "If":
            continue
        orelse = next((a.g for a in branch.attribute if a.name == "else_branch"), None)
        if orelse is None or len(orelse.node) != 3 or any(x.op_type != "Identity"
                                                         for x in orelse.node):
            continue
        by_output = {x.output[0]: x.input[0] for x in orelse.node}
        data, index, updates = (by_output.get(o.name) for o in orelse.output)
        expand = producers.get(index)
        if expand is None or expand.op_type != "Expand" or not unsqueezed(expand.input[0]):
            continue
        n.input[0], n.input[2] = data, updates
        to_scatternd(n, expand.input[0])
        rewritten += 1
    # The exporter slices the scattered values to the index's shape (an identity here: the
    # index was expanded to the values' shape, or is as wide as they are), which copies them
    # and keeps the expanded index alive just for its shape: scatter the values themselves.
    for n in graph.node:
        cut = producers.get(n.input[2]) if n.op_type == "ScatterND" else None
        if cut is not None and cut.op_type == "Slice" and len(cut.input) == 3:
            n.input[2] = cut.input[0]
    # Drop what no longer feeds anything (If branches read outer names too).
    def inputs(nodes):
        for n in nodes:
            yield from n.input
            for a in n.attribute:
                if a.g is not None:
                    yield from inputs(a.g.node)

    while True:
        used = set(inputs(graph.node)) | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    return rewritten


def export(model, layout, low, high, out, example):
    import onnx

    model.eval()
    path = out / "korvid-gnn.onnx"
    torch.onnx.export(
        model, (example.x, example.edge_index, example.edge_type), str(path),
        input_names=["x", "edge_index", "edge_type"], output_names=["tactics", "risk"],
        dynamic_axes={"x": {0: "nodes"}, "edge_index": {1: "edges"}, "edge_type": {0: "edges"},
                      "tactics": {0: "nodes"}, "risk": {0: "nodes"}},
        opset_version=18, dynamo=False)
    m = onnx.load(str(path))
    # The exporter annotates some intermediates with shapes it got wrong; the runtime infers
    # them itself.
    del m.graph.value_info[:]
    rows_scatter_as_scatternd(m.graph)
    names_hash = hashlib.sha256("\n".join(layout["features"]).encode()).hexdigest()
    meta = {
        "korvid.feature_version": str(layout["feature_version"]),
        "korvid.features_sha256": names_hash,
        "korvid.relations": str(len(layout["relations"])),
        "korvid.tactics": ",".join(layout["tactics"]),
        "korvid.fusion_low": f"{low}",
        "korvid.fusion_high": f"{high}",
    }
    for k, v in meta.items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(m)
    data = m.SerializeToString()
    version = hashlib.sha256(data).hexdigest()
    path.write_bytes(data)
    return path, version


@torch.no_grad()
def parity_fixture(model, graphs, out):
    """Inputs and PyTorch outputs for the Rust parity test (no PyTorch at test time)."""
    cases = []
    for g in graphs:
        t, r = model(g.x, g.edge_index, g.edge_type)
        cases.append({
            "nodes": int(g.num_nodes),
            "x": [round(float(v), 6) for v in g.x.flatten()],
            "edge_src": g.edge_index[0].tolist(),
            "edge_dst": g.edge_index[1].tolist(),
            "edge_type": g.edge_type.tolist(),
            "tactics": [float(v) for v in t.flatten()],
            "risk": [float(v) for v in r],
        })
    (out / "parity.json").write_text(json.dumps({"tolerance": 1e-4, "cases": cases}))



# --------------------------------------------------------------------------- model card

SYSTEMS = [("rules", "rules alone"), ("graph_free", "graph-free GBT"),
           ("gnn_only", "GNN alone"), ("rules_plus_gnn", "rules + GNN (fused)")]


def fmt(v):
    return "-" if v != v else f"{v:.2f}"  # NaN: no such tactic in the split


def write_card(summary, layout, out):
    lines = [
        "# korvid-gnn: model card",
        "",
        "Generated by `detect/model/train.py` (`make model`); do not edit by hand.",
        "",
        f"- File: `korvid-gnn.onnx`, sha256 `{summary['model_sha256']}`, ONNX opset 18, "
        f"{summary['parameters']} parameters.",
        f"- Inputs: `x` [nodes, {len(layout['features'])}] float32 (feature layout "
        f"{layout['feature_version']}, `detect/src/model/features.rs`), `edge_index` [2, edges] "
        f"int64, `edge_type` [edges] int64 ({len(layout['relations'])} relations). Outputs: "
        "`tactics` [nodes, 10] and `risk` [nodes], probabilities.",
        "- Architecture: an input layer, two relational message-passing layers (each edge's "
        "message is its source's state composed with a learned embedding of its relation, both "
        "directions typed apart; mean and max aggregation beside the node's own state; "
        "residual), a tactic head and a risk head.",
        f"- Fusion thresholds (chosen on the validation seeds): lower a medium/high finding of "
        f"a state rule (KOR-01xx; activity findings are never lowered) when risk < "
        f"{summary['fusion']['low']}; raise one / add a model finding when risk >= "
        f"{summary['fusion']['high']}. `sweep.py` prints the trade-off for other thresholds.",
        f"- Trained on {summary['device']} in {summary['training_seconds']['gnn']} s (GNN) and "
        f"{summary['training_seconds']['graph_free']} s (baseline). Versions: "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".",
        "",
        "## Data",
        "",
        "Synthetic: `korvid simulate " + " ".join(summary["simulate_args"]) + "` per seed "
        "(8 namespaces, benign traffic with labelled look-alikes, 6 attack campaigns), turned "
        "into windows, rule findings and features by `korvid model featurize` (the same code "
        "detect runs). An entity is malicious in a window when it is an attack step's actor "
        "during the step, or what the step acted on (that window, the next, and later full "
        "windows). Splits are by seed; the techniques "
        + ", ".join(f"`{t}`" for t in summary["held_out_techniques"])
        + " are excluded from the training and validation seeds and simulated alone for the "
        "held-out-technique split.",
        "",
        "| split | seeds | windows | entity rows | malicious rows |",
        "|---|---|---|---|---|",
    ]
    for name, seeds in summary["splits"].items():
        z = summary["sizes"][name]
        lines.append(f"| {name} | {seeds[0]}-{seeds[-1]} | {z['windows']} | {z['entity_rows']} "
                     f"| {z['malicious_rows']} |")
    lines += ["", "Features (rule hits are features: per tactic, the loudest rule finding on the "
              "entity in the window, and the number of hits):", "",
              ", ".join(f"`{f}`" for f in layout["features"]), ""]
    for split, title in [("test", "Held-out seeds"), ("heldout", "Held-out techniques")]:
        rep = summary["report"][split]
        lines += [f"## {title}", "",
                  f"{rep['windows']} windows, {rep['benign_windows']} of them benign. False "
                  "alerts are distinct (seed, tactic, detector, entity) alerts on entities not "
                  "in an attack in that window, as notify would deduplicate them.", "",
                  "| system | false alerts | of which on labelled look-alikes | windows with a false "
                  "alert per 1,000 benign windows | campaign recall | entity recall |",
                  "|---|---|---|---|---|---|"]
        for key, label in SYSTEMS:
            m = rep[key]
            lines.append(f"| {label} | {m['false_alerts']} | {m['false_alerts_on_lookalikes']} | "
                         f"{m['false_alert_windows_per_1000_benign']:.1f} | "
                         f"{m['campaign_recall'][0]}/{m['campaign_recall'][1]} | "
                         f"{m['entity_recall']:.3f} |")
        lines += ["", "Per tactic, precision / recall / F1 (entity-window level):", "",
                  "| tactic | support | " + " | ".join(label for _, label in SYSTEMS) + " |",
                  "|---|---|" + "---|" * len(SYSTEMS)]
        for tactic in layout["tactics"]:
            row = rep["rules"]["per_tactic"][tactic]
            cells = []
            for key, _ in SYSTEMS:
                t = rep[key]["per_tactic"][tactic]
                cells.append(f"{fmt(t['precision'])} / {fmt(t['recall'])} / {fmt(t['f1'])}")
            lines.append(f"| {tactic} | {row['support']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Limits", "",
              "Trained and measured on simulated clusters only: the numbers say how the model "
              "does on the simulator's benign traffic and techniques, not on a real cluster's. "
              "Retrain (`make model`) whenever the feature layout or the rule catalog changes: "
              "rule hits are inputs, and detect refuses a model built for another layout.", ""]
    (out / "MODEL.md").write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--korvid", default="target/release/korvid")
    ap.add_argument("--work", type=Path, default=Path("/tmp/korvid-model"))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--reuse-model", action="store_true",
                    help="take the GNN's weights from OUT/korvid-gnn.pt instead of training "
                         "(to re-run thresholds, baselines, report and export)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"training on {device}")
    args.work.mkdir(parents=True, exist_ok=True)
    simulate_and_featurize(args.korvid, args.work)
    layout = json.loads((args.work / "tables" / "train" / "features.json").read_text())
    splits = {name: Split(args.work / "tables" / name, layout) for name in SPLITS}
    for name, s in splits.items():
        print(f"{name}: {len(s.keys)} windows, {len(s.x)} entity rows, "
              f"{int(s.malicious.sum())} malicious, {len(s.rule_hits)} rule hits")

    torch.manual_seed(args.seed)
    model = KorvidGNN(len(layout["features"]), len(layout["relations"]), len(layout["tactics"]))
    t0 = time.time()
    if args.reuse_model:
        model.load_state_dict(torch.load(args.out / "korvid-gnn.pt", map_location="cpu"))
        previous = json.loads((args.out / "metrics.json").read_text())
        gnn_seconds = previous["training_seconds"]["gnn"]
    else:
        model = train_gnn(model, splits["train"], splits["val"], args.epochs, args.seed)
        gnn_seconds = time.time() - t0
    gnn = {name: predict(model, s) for name, s in splits.items() if name != "train"}
    low, high = choose_thresholds(splits["val"], gnn["val"][1], gnn["val"][0])
    print(f"fusion thresholds (validation): low {low}, high {high}")

    t0 = time.time()
    gbt = train_baseline(splits["train"], args.seed)
    gbt_seconds = time.time() - t0
    gbt_scores = {name: baseline_scores(gbt, s) for name, s in splits.items() if name != "train"}
    gbt_th = choose_baseline_threshold(splits["val"], *gbt_scores["val"])
    print(f"graph-free baseline threshold (validation): {gbt_th}")

    report = {}
    for name in ["test", "heldout"]:
        s = splits[name]
        report[name] = {
            "rules": evaluate(s, rules_alone(s)),
            "graph_free": evaluate(s, per_node(s, gbt_scores[name][0], gbt_scores[name][1], gbt_th)),
            "gnn_only": evaluate(s, per_node(s, gnn[name][1], gnn[name][0], high if high <= 1 else 0.5)),
            "rules_plus_gnn": evaluate(s, fused(s, gnn[name][1], gnn[name][0], low, high)),
            "benign_windows": s.benign_windows,
            "windows": len(s.keys),
        }
        for system, m in report[name].items():
            if isinstance(m, dict):
                print(f"{name:8} {system:15} false alerts {m['false_alerts']:5}  "
                      f"campaigns {m['campaign_recall'][0]}/{m['campaign_recall'][1]}  "
                      f"entity recall {m['entity_recall']:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    example = splits["test"].graph(0)
    path, version = export(model, layout, low, high, args.out, example)
    small = [splits["test"].graph(i) for i in range(len(splits["test"].keys))
             if 3 <= splits["test"].count[i] <= 40 and splits["test"].ecount[i] > 0][:3]
    parity_fixture(model, small, args.out)
    torch.save(model.state_dict(), args.out / "korvid-gnn.pt")
    summary = {
        "model_sha256": version,
        "fusion": {"low": low, "high": high},
        "graph_free_threshold": gbt_th,
        "held_out_techniques": HELD_OUT,
        "splits": {k: v for k, v in SPLITS.items()},
        "simulate_args": SIM_ARGS,
        "sizes": {name: {"windows": len(s.keys), "entity_rows": len(s.x),
                         "malicious_rows": int(s.malicious.sum())} for name, s in splits.items()},
        "training_seconds": {"gnn": round(gnn_seconds, 1), "graph_free": round(gbt_seconds, 1)},
        "device": device,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__,
            "numpy": np.__version__,
        },
        "report": report,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    write_card(summary, layout, args.out)
    print(f"wrote {path} (sha256 {version}), metrics.json, parity.json")


if __name__ == "__main__":
    sys.exit(main())
