"""The grid runner: experiment files, exactly-once cells under crashes and concurrency, Optuna on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from analysis.tables import MAJORITY_ROW, RANDOM_INIT_ROW, make_table
from harness.cli import main
from harness.finetune.tasks import get_task
from harness.grid.experiment import load_experiment
from harness.grid.plan import grid_plan
from harness.grid.runner import prepare_study, run_grid, work
from harness.grid.store import CellStore

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
TINY = str(REPO / "configs" / "tiny.yaml")
FORMATS = ["full_sentences", "doc_sentences"]  # two cheap arms; a masking study needs epochs (harness.grid.plan)
QUICK = {"optim.warmup_steps": 2, "train.val_every": 10, "train.log_every": 5, "train.num_workers": 0,
         "train.wandb": "disabled"}


def write_experiment(path: Path, scientific: dict, overrides: dict, seeds=(0,), tune: dict | None = None,
                     nuisance: dict | None = None, **top) -> Path:
    doc = {"study": path.stem, "table": 2, "base": TINY, "scientific": scientific,
           "nuisance": nuisance or {"optim.peak_lr": {"low": 1e-4, "high": 3e-3, "log": True}},
           "scales": {"smoke": {"overrides": {**QUICK, **overrides}, "seeds": list(seeds), "tune": tune or {}}}, **top}
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_file_validates_at_every_scale(path):
    scales = yaml.safe_load(path.read_text())["scales"]
    assert {"smoke", "demo", "paper"} <= set(scales)
    for scale in scales:
        exp = load_experiment(path, scale)
        assert len(exp.arms) >= 2 and exp.seeds
        for arm in exp.arms:  # every cell resolves to a valid config
            exp.config(arm, exp.seeds[0], "runs")
        # A random-init baseline per encoder shape: Table 2's NSP arms have segment embeddings, the others not.
        shapes = ["segment_pair_nsp", "full_sentences"] if exp.table == 2 else [exp.reference_arm]
        assert list(dict.fromkeys(exp.random_init_baselines.values())) == shapes
        if scale != "paper":  # the paper scale's corpus is the user's own: its plan is recorded, not stated
            assert exp.epochs is not None, f"{path.name}: scales.{scale} states no epochs"
        if scale in ("smoke", "demo"):  # fine-tuned offline: stand-ins only (issue 31: TREC-6 and the built tasks)
            assert exp.finetune_tasks and all(get_task(t).standin == t for t in exp.finetune_tasks), exp.finetune_tasks
        if scale == "demo":
            assert exp.finetune_protocol == "grid_demo"
        if exp.table == 3 and scale != "smoke":  # warmup: the same fraction of every arm's steps
            optims = [exp.config(arm, exp.seeds[0], "runs").optim for arm in exp.arms]
            assert len({round(o.warmup_steps / o.max_steps, 3) for o in optims}) == 1


@pytest.mark.parametrize(
    "edit, key",
    [
        ({"scientific": {"data.no_such_factor": [1, 2]}}, "data.no_such_factor"),
        ({"fixed": {"optim.max_steps": "many"}}, "optim.max_steps"),
        ({"fixed": {"data.nsp_positive_prob": 0.3}, "scientific": {"data.input_format": ["full_sentences",
                                                                                        "doc_sentences"]}},
         "data.nsp_positive_prob"),
        ({"scientific": {}, "linked": {"optim.batch_size": [8, 16], "optim.max_steps": [20, 10, 5]}}, "linked"),
        ({"scale": "huge"}, "scales.huge"),
        ({"typo_key": 1}, "typo_key"),
        ({"scales": {"smoke": {"overrides": QUICK, "epochs": [1.0]}}}, "scales.smoke.epochs"),
        ({"scales": {"smoke": {"overrides": QUICK, "tune": {"trials": 2, "max_steps": 10}}}}, "tune.max_steps"),
    ],
    ids=["unknown-factor", "wrong-type", "nsp-on-non-nsp", "unequal-linked", "undefined-scale", "unknown-top-key",
         "epochs-not-one-per-arm", "tune-shortened-schedule"],
)
def test_bad_grid_file_is_one_line_exit_2_and_records_nothing(tmp_path, edit, key):
    edit = dict(edit)
    scale = edit.pop("scale", "smoke")
    path = write_experiment(tmp_path / "bad.yaml", {"data.masking": ["static", "dynamic"]}, {})
    doc = yaml.safe_load(path.read_text())
    doc.update(edit)
    path.write_text(yaml.safe_dump(doc))
    runs = tmp_path / "runs"
    r = cli("grid", "run", str(path), "--scale", scale, "--runs-dir", str(runs))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not runs.exists()


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("table: 2\n", "table: 2.7\n", "table"),
        ("tasks: [trec6, gap_sentence]", "tasks: [no_such_task]", "finetune.tasks"),
        ("finetune: {protocol: smoke}", "finetune: {protocol: no_such_protocol}", "scales.smoke.finetune.protocol"),
        ("finetune: {protocol: smoke}", "finetune: {protocol: smoke}\n    tune: {trials: 1.5}",
         "scales.smoke.tune.trials"),
        ("tasks: [trec6, gap_sentence]", "tasks: [mnli]", "finetune.tasks"),  # no stand-in, and no --data-dir
    ],
    ids=["fractional-table", "unknown-task", "unknown-protocol", "fractional-trials", "unreachable-task-data"],
)
def test_bad_field_in_a_table_file_exits_2_in_seconds_before_any_pretraining(tmp_path, old, new, field):
    """experiments/table2_nsp.yaml with one field changed: every field is type-checked (no int() of 2.7) and the
    fine-tuning tasks, protocol and their data are resolved when the file is read, not when a cell gets there."""
    text = (REPO / "experiments" / "table2_nsp.yaml").read_text()
    assert text.count(old) == 1
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new))
    runs = tmp_path / "runs"
    start = time.perf_counter()
    r = cli("grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(runs))
    seconds = time.perf_counter() - start
    assert r.returncode == 2, r.stdout + r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"bad.yaml: {field}: " in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not runs.exists()  # no study folder, no grid.sqlite, no run folder
    assert seconds < 10, f"{seconds:.1f} s"


@pytest.mark.slow  # `make test-slow` (two workers, ~1 minute): keeps `make test` inside its 15 minutes
def test_grid_run_exits_1_naming_each_failed_cell_and_its_log(tmp_path):
    """Every cell's fine-tuning fails (an SST-2 train file with a label outside {0, 1}, which only reading it finds):
    each cell is recorded as failed and the grid goes on, then `grid run` exits 1 (ran, but cells failed; 2 is bad
    input), naming every failed cell by kind, arm and seed with its error and the log its worker wrote."""
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "train.tsv").write_text("sentence\tlabel\na good film\t1\na bad film\t7\n")
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\na good film\t1\n")
    path = write_experiment(tmp_path / "fails.yaml", {"data.input_format": FORMATS}, {"optim.max_steps": 10},
                            finetune={"tasks": ["sst2"], "protocol": "smoke"})
    runs = tmp_path / "runs"
    r = cli("grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(runs), "--data-dir", str(glue),
            "--workers", "2")
    assert r.returncode == 1, r.stderr[-3000:]
    folder = runs / "fails-smoke"
    assert sorted(s[2] for s in statuses(folder)) == ["failed", "failed"]
    assert "error: 2 cell(s) failed" in r.stderr, r.stderr[-3000:]
    for arm in FORMATS:
        line = next(x for x in r.stderr.splitlines() if x.startswith(f"  run {arm} seed 0: "))
        assert "train.tsv:3: label '7' is not one of ['0', '1']" in line, line
        log = Path(line.rsplit("[log: ", 1)[1].removesuffix("]"))
        assert log.parent == folder / "logs" and f"run {arm} seed 0 failed" in log.read_text(), line


def refused(path: Path, runs: Path) -> str:
    """`grid run` of a file whose plan is refused: exit 2, one line on stderr, nothing recorded."""
    r = cli("grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(runs))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not runs.exists()
    return lines[0]


def test_masking_study_planned_within_its_static_masks_is_refused(tmp_path):
    """Static and dynamic masks coincide over the first data.static_masks epochs: such a design shows nothing."""
    path = write_experiment(tmp_path / "masks.yaml", {"data.masking": ["static", "dynamic"]}, {"optim.max_steps": 10})
    line = refused(path, tmp_path / "runs")
    assert "arm static" in line and "data.static_masks=10" in line, line


def with_epochs(path: Path, epochs: list[float]) -> Path:
    doc = yaml.safe_load(path.read_text())
    doc["scales"]["smoke"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(doc))
    return path


def test_study_json_carries_the_plan_and_stated_epochs_are_checked_against_it(tmp_path):
    path = write_experiment(tmp_path / "plan.yaml", {"data.input_format": FORMATS}, {"optim.max_steps": 30})
    plan = grid_plan(load_experiment(path, "smoke"))
    for p in plan.values():  # the arithmetic: test_grid_plan.py's written-down step plan
        assert 0 < p["tokens"] < p["train_tokens"]
    with_epochs(path, [plan[f]["epochs"] * 1.06 for f in FORMATS])  # beyond the tolerance
    line = refused(path, tmp_path / "runs")
    assert "scales.smoke.epochs: arm full_sentences" in line, line
    with_epochs(path, [plan[f]["epochs"] * 0.96 for f in FORMATS])  # a rounded statement passes
    folder = prepare_study(load_experiment(path, "smoke"), str(tmp_path / "runs"), None)
    assert json.loads((folder / "study.json").read_text())["plan"] == plan


def test_tuning_trial_runs_its_arms_schedule_and_stops_at_the_token_budget(tmp_path):
    overrides = {"optim.max_steps": 20, "optim.warmup_steps": 5, "train.log_every": 1, "train.val_every": 20}
    path = write_experiment(tmp_path / "budget.yaml", {"data.input_format": ["full_sentences"]}, overrides,
                            tune={"trials": 2, "tokens": 3000}, single_arm=True)
    folder = run_grid(str(path), "smoke", str(tmp_path / "runs"))
    stop = json.loads((folder / "study.json").read_text())["plan"]["full_sentences"]["trial_steps"]
    assert 5 < stop < 20  # past the warmup, short of the arm's 20 steps

    def curve(run: Path, key: str) -> dict[int, float]:
        return {int(float(r["step"])): float(r[key]) for r in _csv(run / "metrics.csv") if r.get(key)}

    def relative_lr(run: Path) -> dict[int, float]:  # the schedule, whatever peak LR the trial drew
        peak = json.loads((run / "cell.json").read_text())["nuisance"]["optim.peak_lr"]
        return {step: lr / peak for step, lr in curve(run, "train/lr").items()}

    full = folder / "full_sentences" / "seed_0"
    assert json.loads((full / "result.json").read_text())["steps"] == 20
    schedule = relative_lr(full)
    for k in (0, 1):
        trial = folder / "full_sentences" / "tune" / f"trial_{k}" / "seed_0"
        result = json.loads((trial / "result.json").read_text())
        assert result["status"] == "finished" and result["steps"] == stop
        lr = relative_lr(trial)
        assert max(lr) == stop and all(lr[step] == pytest.approx(schedule[step]) for step in lr)
        tokens = curve(trial, "train/tokens")
        assert tokens[stop] == result["tokens_seen"] >= 3000 > tokens[stop - 1]  # stops at the step that reaches it


def statuses(folder: Path) -> list[tuple[str, int, str, int]]:
    return [(r["arm"], r["seed"], r["status"], r["attempts"]) for r in CellStore(folder / "grid.sqlite").rows()]


def test_smoke_table_runs_end_to_end_and_a_second_run_skips_everything(tmp_path):
    r = cli("grid", "run", "experiments/table2_nsp.yaml", "--scale", "smoke", "--runs-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "table2_nsp-smoke"
    assert [s[2] for s in statuses(folder)] == ["finished"] * 8  # 4 arms x 2 seeds
    info = json.loads((folder / "study.json").read_text())
    for arm in info["arms"]:
        run = folder / arm["name"] / "seed_0"
        cell = json.loads((run / "cell.json").read_text())
        assert cell["scientific"] == arm["scientific"] and cell["provenance"]["packages"]["torch"]
        assert json.loads((run / "result.json").read_text())["status"] == "finished"
        assert info["finetune"]["tasks"] == ["trec6", "gap_sentence"]
        for task in info["finetune"]["tasks"]:
            assert json.loads((run / "finetune" / task / "summary.json").read_text())["median"] is not None
            baseline = run / "finetune-random-init" / task / "summary.json"  # one arm per encoder shape
            assert baseline.is_file() == (arm["name"] in info["random_init_baseline"].values()), arm["name"]
    nsp, no_nsp = "segment_pair_nsp", "full_sentences"  # the first arm with segment embeddings, the first without
    assert info["random_init_baseline"] == {"segment_pair_nsp": nsp, "sentence_pair_nsp": nsp,
                                            "full_sentences": no_nsp, "doc_sentences": no_nsp}
    table = make_table(folder)
    wide = table.wide
    # A few steps of a tiny model fine-tune to the majority class, as the same encoder from random weights does: the
    # downstream claims have no signal, whatever their intervals say.
    assert set(table.verdicts["verdict"]) == {"no signal"}, table.verdicts
    assert [a.split(" (")[0] for a in wide[wide["paper row"] == RANDOM_INIT_ROW]["arm"]] == [
        "segment_pair_nsp, random init", "full_sentences, random init"]  # "(degenerate: ...)" where it is
    assert len(wide[wide["paper row"] == MAJORITY_ROW]) == 1
    for arm in info["arms"]:  # one W&B run per cell, in the cell's folder, although one worker ran them all
        assert list((folder / arm["name"] / "seed_0" / "wandb").glob("offline-run-*")), arm["name"]
    again = cli("grid", "run", "experiments/table2_nsp.yaml", "--scale", "smoke", "--runs-dir", str(tmp_path))
    assert again.returncode == 0 and all(s[3] == 1 for s in statuses(folder))  # nothing ran twice


def test_diverged_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    """The diverged arm comes first, so it is its shape's random-init baseline: its seed is still fine-tuned from
    random weights (else that seed would leave the baseline check unseen), but not from its diverged weights."""
    path = write_experiment(tmp_path / "div.yaml", {"optim.peak_lr": [1.0e6, 1.0e-3]}, {"optim.max_steps": 20},
                            finetune={"tasks": ["rt_sentiment"], "protocol": "smoke"})
    folder = run_grid(str(path), "smoke", str(tmp_path / "runs"))
    by_arm = {s[0]: s[2] for s in statuses(folder)}
    assert by_arm == {"peak_lr=0.001": "finished", "peak_lr=1000000.0": "diverged"}
    diverged = folder / "peak_lr=1000000.0" / "seed_0"
    result = json.loads((diverged / "result.json").read_text())
    assert result["diverged_at_step"] is not None
    assert (diverged / "finetune-random-init" / "rt_sentiment" / "summary.json").is_file()
    assert not (diverged / "finetune").exists()
    assert (folder / "peak_lr=0.001" / "seed_0" / "finetune" / "rt_sentiment" / "summary.json").is_file()


def final_metrics(run_dir: Path) -> dict:
    r = json.loads((run_dir / "result.json").read_text())
    return {k: r[k] for k in ("steps", "final_train_loss", "final_valid_loss")}


@pytest.mark.slow  # `make test-slow`, which .ci/run runs after `make test`
def test_kill_9_mid_cell_then_rerun_completes_each_cell_once_with_the_same_metrics(tmp_path):
    # Two documents (19 steps per epoch) and 2 static masks: a masking study the plan accepts (3 epochs), whose
    # resumed run crosses epoch boundaries.
    overrides = {"optim.max_steps": 60, "train.checkpoint_every": 10, "data.data_tokens": 5000, "data.static_masks": 2}
    path = write_experiment(tmp_path / "crash.yaml", {"data.masking": ["static", "dynamic"]}, overrides)
    exp = load_experiment(path, "smoke")
    folder = prepare_study(exp, str(tmp_path / "runs"), None)
    worker = subprocess.Popen([sys.executable, "-m", "harness", "grid", "worker", str(folder)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = folder / "static" / "seed_0" / "checkpoints"
    deadline = time.time() + 240
    while not any(ckpt.glob("step_*")) and time.time() < deadline:  # mid-cell: a checkpoint exists, not finished
        time.sleep(0.2)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert any(ckpt.glob("step_*")) and not (folder / "static" / "seed_0" / "result.json").exists()
    assert work(folder) == 2  # the interrupted cell (reclaimed at once: its worker is dead) and the other one
    rows = {s[0]: s for s in statuses(folder)}
    assert rows["static"][2:] == ("finished", 2) and rows["dynamic"][2:] == ("finished", 1)
    steps = [int(float(r["step"])) for r in _csv(folder / "static" / "seed_0" / "metrics.csv") if r.get("train/loss")]
    assert len(steps) == len(set(steps))  # the resumed run did not log any step twice

    clean = run_grid(str(path), "smoke", str(tmp_path / "clean"))
    for arm in ("static", "dynamic"):
        a, b = final_metrics(folder / arm / "seed_0"), final_metrics(clean / arm / "seed_0")
        assert a["steps"] == b["steps"] == 60
        assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], abs=1e-5)
        assert a["final_valid_loss"] == pytest.approx(b["final_valid_loss"], abs=1e-5)


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # `make test-slow`, which .ci/run runs after `make test`
def test_two_workers_started_together_run_every_cell_exactly_once(tmp_path):
    path = write_experiment(tmp_path / "pair.yaml", {"data.input_format": ["full_sentences", "doc_sentences"]},
                            {"optim.max_steps": 10}, seeds=(0, 1))
    folder = prepare_study(load_experiment(path, "smoke"), str(tmp_path / "runs"), None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "harness", "grid", "worker", str(folder)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    rows = statuses(folder)
    assert len(rows) == 4 and all(s[2:] == ("finished", 1) for s in rows), rows
    claimed = [line for out in outputs for line in out.splitlines() if line.startswith("[grid ")]
    assert len(claimed) == 4  # four claims in all, split between the two workers


@pytest.mark.slow  # `make test-slow`, which .ci/run runs after `make test`
def test_optuna_tuning_on_postgresql_then_best_values_for_every_seed(tmp_path, postgres_url):
    path = write_experiment(tmp_path / f"pg{os.getpid()}.yaml", {"data.input_format": FORMATS},
                            {"optim.max_steps": 10}, seeds=(0, 1), tune={"trials": 2, "tokens": 3000})
    folder = run_grid(str(path), "smoke", str(tmp_path / "runs"), workers=2, optuna_storage=postgres_url)
    rows = CellStore(folder / "grid.sqlite").rows()
    assert sorted((r["kind"], r["status"]) for r in rows).count(("run", "finished")) == 4
    assert all(r["status"] in ("finished", "pruned") for r in rows if r["kind"] == "tune")
    assert sorted(Path(r["run_dir"]).relative_to(folder).as_posix() for r in rows if r["kind"] == "tune") == [
        f"{arm}/tune/trial_{k}/seed_0" for arm in sorted(FORMATS) for k in (0, 1)]
    for arm in FORMATS:
        study = optuna.load_study(study_name=f"{folder.name}/{arm}", storage=postgres_url)
        assert len(study.trials) == 2
        best = study.best_trial.params["optim.peak_lr"]
        for seed in (0, 1):
            cell = json.loads((folder / arm / f"seed_{seed}" / "cell.json").read_text())
            assert cell["nuisance"]["optim.peak_lr"] == pytest.approx(best)
            assert cell["tuning"]["optim.peak_lr"]["best"] == pytest.approx(best)
    for arm in FORMATS:
        optuna.delete_study(study_name=f"{folder.name}/{arm}", storage=postgres_url)


@pytest.mark.slow  # `make test-slow`, which .ci/run runs after `make test`
def test_submitit_local_executor_backend(tmp_path):
    path = write_experiment(tmp_path / "sub.yaml", {"data.input_format": FORMATS}, {"optim.max_steps": 10})
    folder = run_grid(str(path), "smoke", str(tmp_path / "runs"), backend="submitit-local", workers=1)
    assert [s[2] for s in statuses(folder)] == ["finished", "finished"]


def test_grid_data_dir_reaches_every_cells_finetuning(tmp_path, capsys):
    """`grid run --data-dir` records the folder in study.json, where workers read it, and every cell fine-tunes on
    those official files (sst2 without them would run on its stand-in); a missing folder or file is one line, exit 2,
    with nothing recorded."""
    data = tmp_path / "glue"
    for split, n in (("train", 40), ("dev", 20)):  # GLUE's SST-2 layout: DIR/SST-2/{train,dev}.tsv
        (data / "SST-2").mkdir(parents=True, exist_ok=True)
        rows = [f"{'a great film' if k % 2 else 'an awful film'} number {k}\t{k % 2}" for k in range(n)]
        (data / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    path = write_experiment(tmp_path / "files.yaml", {"data.masking": ["dynamic"]}, {"optim.max_steps": 10},
                            finetune={"tasks": ["sst2"], "protocol": "smoke"}, single_arm=True)
    runs = tmp_path / "runs"
    for bad, message in [(tmp_path / "nope", "not a folder"), (data / "SST-2", "missing")]:
        code = main(["grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(runs), "--data-dir", str(bad)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: --data-dir") and err.count("\n") == 1 and message in err, err
        assert not runs.exists()
    r = cli("grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(runs), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr[-3000:]
    folder = runs / "files-smoke"
    assert json.loads((folder / "study.json").read_text())["data_dir"] == str(data.resolve())
    for init in ("finetune", "finetune-random-init"):  # the one arm is also its shape's random-init baseline
        summary = json.loads((folder / "dynamic" / "seed_0" / init / "sst2" / "summary.json").read_text())
        assert summary["data_source"] == "real" and summary["data_origin"] == str(data.resolve()), summary
        assert summary["n_train"] == 40 and summary["n_dev"] == 20
