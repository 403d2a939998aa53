"""`make bench` (sections data, pretrain, refusals) and `make bench-prep` (prep): run the sections in one process and
write them into runs/bench/latest.json (also printed), keeping the sections another command wrote there.

Each section returns a dict of numbers; ratios are taken against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

import torch

from harness.errors import UserError
from harness.files import read_json, write_json

SECTIONS = ("data", "pretrain", "refusals", "prep", "frontier", "finetune_frontier")


def bench_from_cli(args: argparse.Namespace) -> None:
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in names:
        if name not in SECTIONS:
            raise UserError(f"--sections: expected names from {list(SECTIONS)}, got {name!r}")
    out = Path(args.out)
    report = read_json(out) or {}
    report |= {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else None},
    }
    for name in names:
        print(f"== bench: {name}", flush=True)
        report[name] = importlib.import_module(f"harness.benchmarks.{name}").run()
    if "data" in names and "pretrain" in names:
        consumed = report["pretrain"]["tokens_per_s"] / report["data"]["seq_len"]  # sequences/s the model eats
        report["data"]["loader_headroom_vs_model"] = round(report["data"]["loader_seq_per_s"] / consumed, 1)
    write_json(out, report)
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")
