#!/usr/bin/env python3
"""How the fusion thresholds trade false alerts for recall, on the tables `train.py` wrote:
the shipped model (korvid-gnn.pt) against the rules alone, on every evaluation split.

    python detect/model/sweep.py --work /tmp/korvid-model
"""

import argparse
import json
from pathlib import Path

import torch

from train import HERE, KorvidGNN, Split, evaluate, fused, predict, rules_alone


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/korvid-model"))
    ap.add_argument("--splits", default="val,test,heldout")
    args = ap.parse_args()
    layout = json.loads((args.work / "tables" / "train" / "features.json").read_text())
    model = KorvidGNN(len(layout["features"]), len(layout["relations"]), len(layout["tactics"]))
    model.load_state_dict(torch.load(HERE / "korvid-gnn.pt", map_location="cpu"))
    for name in args.splits.split(","):
        split = Split(args.work / "tables" / name, layout)
        tactics, risk = predict(model, split)
        base = evaluate(split, rules_alone(split))
        print(f"{name}: rules alone: {base['false_alerts']} false alerts, entity recall "
              f"{base['entity_recall']:.3f}, campaigns {base['campaign_recall']}")
        for low in [0.0, 0.01, 0.05, 0.1, 0.2, 0.3]:
            for high in [0.95, 0.99]:
                m = evaluate(split, fused(split, risk, tactics, low, high))
                print(f"  low {low:<5} high {high:<5} false alerts {m['false_alerts']:4}  "
                      f"entity recall {m['entity_recall']:.3f}  campaigns {m['campaign_recall']}")


if __name__ == "__main__":
    main()
