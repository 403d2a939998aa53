"""How fast the command line refuses bad input: each case below runs `python -m harness ...` in a fresh process and
must end with exit 2 and one line on stderr naming what is wrong. `make bench` records the CPU seconds (user + system
of the child, which other processes on the machine do not inflate the way they do wall time) of the slowest case as
`refusal_cpu_s_max`; the target is <= 2 s, which a command that imports torch or Lightning before checking its input
cannot meet (importing them alone costs several CPU-seconds on a 2-core machine). tests/test_refusals.py runs the
same cases for their exit code and line, untimed, and checks that those torch need not read are refused before it
loads.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TARGET_CPU_S = 2.0


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    expect: str  # a piece of the one line on stderr
    env: tuple[tuple[str, str], ...] = ()  # set for this case, e.g. a HARNESS_CACHE of its own


def _experiment(path: Path, **edits) -> str:
    doc = {"study": path.stem, "table": 2, "base": str(REPO / "configs" / "tiny.yaml"),
           "scientific": {"data.input_format": ["full_sentences", "doc_sentences"]},
           "scales": {"smoke": {"overrides": {"optim.max_steps": 10, "optim.warmup_steps": 2}, "seeds": [0]}}}
    doc.update(edits)
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def cut_short_zip(path: Path) -> Path:
    """The first half of a zip archive, as torch.save writes a checkpoint: a copy that stopped, a full disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", os.urandom(4096))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def run_folder(folder: Path) -> Path:
    """A pretraining run folder as `finetune` and `export-hf` look for it (config.yaml, tokenizer.json, last.ckpt),
    whose checkpoint is cut short: a command that reaches the checkpoint refuses it."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"corpus": "tiny"}}))
    Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    cut_short_zip(folder / "checkpoints" / "last.ckpt")
    return folder


def cases(tmp: Path) -> list[Case]:
    """The bad inputs of issues 26 and 33 and the usual ones (a typo, a missing file), with the files they need under
    tmp."""
    latin1 = tmp / "latin1.yaml"
    latin1.write_bytes(b"# caf\xe9\ndata: {corpus: tiny}\n")
    listed = tmp / "listed.yaml"
    listed.write_text("data: [corpus, tiny]\n")
    a_file = tmp / "a_file"
    a_file.write_text("not a folder\n")
    broken = tmp / "runs" / "broken-smoke"
    broken.mkdir(parents=True)
    (broken / "grid.sqlite").write_text("not a database\n")
    half = tmp / "runs" / "half-smoke"
    half.mkdir()
    (half / "study.json").write_text('{"study": "half", "arms": [')
    runs = str(tmp / "runs")
    good = _experiment(tmp / "good.yaml")
    cut = str(run_folder(tmp / "cut" / "a" / "seed_0"))
    cut_short_zip(tmp / "runs" / "r" / "a" / "seed_0" / "checkpoints" / "last.ckpt")  # a run to resume, no result
    glue = tmp / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "train.tsv").write_text("sentence,label\na fine film,1\n")  # saved as CSV
    (glue / "dev.tsv").write_text("sentence\tlabel\ndull\t0\n")
    blank = tmp / "blank"
    blank.mkdir()
    for name in ("a.txt", "b.txt"):
        (blank / name).write_text("\n  \n\n")
    cross = {"scientific": {}, "linked": {"data.input_format": ["full_sentences", "doc_sentences"],
                                          "data.max_seq_len": [64, 1024]}}
    return [
        Case("pretrain: a value of the wrong type", ("pretrain", "optim.peak_lr=abc"), "optim.peak_lr: expected"),
        Case("pretrain: no such config file", ("pretrain", "--config", str(tmp / "no.yaml")), "not found"),
        Case("pretrain: a config file that is not UTF-8", ("pretrain", "--config", str(latin1)), "not UTF-8"),
        Case("pretrain: a config section that is a list", ("pretrain", "--config", str(listed)),
             "data: expected a mapping"),
        Case("pretrain: sequences longer than the position table", ("pretrain", "data.max_seq_len=1024"),
             "data.max_seq_len: expected at most model.max_positions"),
        Case("pretrain: a batch that does not split into micro-batches",
             ("pretrain", "optim.batch_size=12", "optim.micro_batch_size=8"), "optim.batch_size: expected a multiple"),
        Case("pretrain: no such corpus", ("pretrain", f"data.corpus={tmp / 'no_corpus'}", f"train.runs_dir={runs}"),
             "no such file or folder"),
        Case("pretrain: resuming from a checkpoint cut short",
             ("pretrain", f"train.runs_dir={runs}", "train.study=r", "train.arm=a"), "cannot read this checkpoint"),
        Case("finetune: no such run folder", ("finetune", str(tmp / "no_run"), "--task", "rt_sentiment"),
             "run folder not found"),
        Case("finetune: a task file with a comma-separated header",
             ("finetune", cut, "--task", "sst2", "--data-dir", str(glue.parent)), "expected a header with columns"),
        Case("finetune: a checkpoint cut short", ("finetune", cut, "--task", "rt_sentiment"),
             "cannot read this checkpoint"),
        Case("export-hf: a checkpoint cut short", ("export-hf", cut, str(tmp / "hf")), "cannot read this checkpoint"),
        Case("finetune: an unknown task", ("finetune", str(tmp / "no_run"), "--task", "no_such_task"),
             "no_such_task"),
        Case("export-hf: no such run folder", ("export-hf", str(tmp / "no_run"), str(tmp / "hf")),
             "run folder not found"),
        Case("grid run: an undefined scale", ("grid", "run", good, "--scale", "huge", "--runs-dir", runs),
             "scales.huge"),
        Case("grid run: a one-value factor", ("grid", "run", _experiment(tmp / "one.yaml", scientific={
            "data.input_format": ["full_sentences"]}), "--scale", "smoke", "--runs-dir", runs),
             "a comparison needs at least two arms"),
        Case("grid run: an arm beyond the position table",
             ("grid", "run", _experiment(tmp / "cross.yaml", **cross), "--scale", "smoke", "--runs-dir", runs),
             "data.max_seq_len: expected at most model.max_positions"),
        Case("grid run: no such corpus", ("grid", "run", _experiment(tmp / "nocorpus.yaml", fixed={
            "data.corpus": str(tmp / "no_corpus")}), "--scale", "smoke", "--runs-dir", runs), "no such file or folder"),
        Case("grid run: --runs-dir names a file", ("grid", "run", good, "--scale", "smoke", "--runs-dir", str(a_file)),
             "not a folder"),
        Case("grid run: --devices-per-worker 0",
             ("grid", "run", good, "--scale", "smoke", "--runs-dir", runs, "--devices-per-worker", "0"),
             "--devices-per-worker"),
        Case("grid run: a grid.sqlite that is not a database",
             ("grid", "run", _experiment(tmp / "broken.yaml"), "--scale", "smoke", "--runs-dir", runs),
             "not a readable SQLite database"),
        Case("grid status: a grid.sqlite that is not a database", ("grid", "status", str(broken)),
             "not a readable SQLite database"),
        Case("grid status: a half-written study folder", ("grid", "status", str(half)), "study.json: not valid JSON"),
        Case("data prepare: no such corpus", ("data", "prepare", "--corpus", str(tmp / "no_corpus"), "--workers", "1"),
             "no such file or folder"),
        Case("data prepare: files of blank lines only", ("data", "prepare", "--corpus", str(blank), "--workers", "1"),
             "no documents after normalisation", env=(("HARNESS_CACHE", str(tmp / "cache")),)),  # built, not cached
    ]


def refuse(case: Case) -> dict:
    """Run one case in a fresh process: its exit code, stderr lines and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "harness", *case.argv], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **dict(case.env)}, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = r.stderr.strip().splitlines()
    ok = r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and case.expect in lines[0]
    return {"case": case.name, "exit": r.returncode, "line": lines[-1] if lines else "", "lines": len(lines),
            "ok": ok, "cpu_s": round(cpu, 3)}


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        results = [refuse(case) for case in cases(Path(tmp))]
    worst = max(results, key=lambda r: r["cpu_s"])
    for r in results:
        print(f"{r['cpu_s']:6.2f} CPU-s  exit {r['exit']}  {'ok ' if r['ok'] else 'BAD'}  {r['case']}: {r['line']}")
    return {"refusal_cpu_s_max": worst["cpu_s"], "slowest": worst["case"], "target_cpu_s": TARGET_CPU_S,
            "all_one_line_exit_2": all(r["ok"] for r in results), "cases": results}
