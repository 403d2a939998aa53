"""`python -m harness finetune RUN_DIR --task T [--task T2] [--data-dir DIR|hf] [--protocol demo] [--init random]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.finetune.protocol import load_protocol
from harness.finetune.runner import finetune, results_dir
from harness.finetune.tasks import check_files, get_task
from harness.pretrain import load_run


def finetune_from_cli(args: argparse.Namespace) -> None:
    init = getattr(args, "init", "pretrained")
    data_dir = args.data_dir if args.data_dir in (None, "hf") else Path(args.data_dir)
    # Check everything the user typed before the first (long) fit.
    for task in args.task:
        spec = get_task(task)
        if isinstance(data_dir, Path) and spec.standin != spec.name:
            check_files(spec, data_dir)
    load_protocol(args.protocol)
    run = load_run(Path(args.run_dir), weights=init == "pretrained")
    if init == "pretrained" and run.status != "finished":
        print(f"warning: {args.run_dir}: pretraining status is {run.status!r}, not 'finished'",
              file=sys.stderr)
    for task in args.task:
        summary = finetune(Path(args.run_dir), task, data_dir, args.protocol, init)
        where = results_dir(Path(args.run_dir), task, init) / "summary.json"
        if summary["median"] is None:
            print(f"{task}: {summary['status']} (give --data-dir with the official files) -> {where}")
        else:
            print(f"{task} {summary['metric']}: median {summary['median']:.2f} over {summary['n_seeds']} seeds "
                  f"[{summary['min']:.2f}, {summary['max']:.2f}] ({summary['data_source']}) -> {where}")
