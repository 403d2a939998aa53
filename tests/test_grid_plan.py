"""`grid plan`: a cost preview from the configs alone, which records nothing and warns where `grid run` refuses."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from harness.cli import main
from harness.config import load_config
from harness.grid.cost import PEAK_FLOPS, finetune_parts, flops_per_token, pretrain_parts
from harness.grid.experiment import load_experiment
from harness.grid.plan import arm_plan, grid_plan
from harness.model import MaskedLM

TABLE4 = "experiments/table4_data.yaml"
EXPERIMENTS = sorted(Path(__file__).resolve().parents[1].glob("experiments/*.yaml"))


def _planned_scales() -> list:
    """(file, scale) for every scale but paper (whose corpus is the user's own), slow where the scale's corpus is not
    the tiny one the suite prepares in seconds (the demo corpus takes minutes to fetch and prepare)."""
    params = []
    for path in EXPERIMENTS:
        for scale in yaml.safe_load(path.read_text())["scales"]:
            if scale == "paper":
                continue
            exp = load_experiment(path, scale)
            corpora = {exp.config(arm, exp.seeds[0], "runs").data.corpus for arm in exp.arms}
            marks = () if corpora == {"tiny"} else pytest.mark.slow
            params.append(pytest.param(path, scale, marks=marks, id=f"{path.stem}-{scale}"))
    return params


def plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["grid", "plan", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_flops_per_token_from_the_config_is_the_models_own():
    cfg = load_config("configs/tiny.yaml")
    for nsp, predicted in ((False, 0.15), (True, 0.15), (False, 1.0)):
        model = MaskedLM(cfg.model, 2000, nsp=nsp, seed=0)
        assert flops_per_token(cfg.model, 64, 2000, predicted, nsp) == model.flops_per_token(64, predicted)


def test_arm_plan_from_a_written_down_step_plan():
    """Five sequences of 10-50 tokens, an epoch of two steps ([0, 1] and [2, 3]; the 50 left over, as a sampler
    drops a short last batch), 5 steps: 50 tokens a step, 250 in all, 2.5 epochs over 150 training tokens; a trial
    of 75 tokens stops after step 2 (30, then 100)."""
    lengths = np.array([10, 20, 30, 40, 50])
    sampler = SimpleNamespace(steps=lambda: [np.array([0, 1]), np.array([2, 3])], set_epoch=lambda epoch: None)
    data = SimpleNamespace(train_examples=SimpleNamespace(lengths=lengths), train_sampler=sampler)
    cfg = SimpleNamespace(train=SimpleNamespace(seed=3), optim=SimpleNamespace(max_steps=5))
    assert arm_plan(cfg, data, tune_tokens=75) == {"seed": 3, "tokens_per_step": 50.0, "steps": 5, "tokens": 250,
                                                   "steps_per_epoch": 2, "epochs": 2.5, "train_tokens": 150,
                                                   "trial_steps": 2}
    assert arm_plan(cfg, data, tune_tokens=1000)["trial_steps"] is None  # the whole run sees 250


@pytest.mark.parametrize("path, scale", _planned_scales())
def test_the_plan_grid_run_computes_gives_each_scales_stated_epochs(path, scale):
    """The plan `grid run` refuses a design by, on the data the scale trains on: the stated epochs (checked at load
    by tests/test_grid.py only for being there) are within the plan's tolerance of what the data module computes,
    and a masking study's static arm sees each static mask again. Table 1's smoke scale once stated 2.5 epochs where
    a fresh cache planned 2.63, and `make ablation-masking SCALE=smoke` stopped before its first cell."""
    exp = load_experiment(path, scale)
    assert set(grid_plan(exp)) == {arm.name for arm in exp.arms}  # a refused design raises UserError


def test_table4_paper_is_priced_without_its_corpus_and_records_nothing(capsys, tmp_path):
    code, out, err = plan(capsys, TABLE4, "--scale", "paper", "--runs-dir", str(tmp_path / "runs"))
    assert code == 0, err
    assert not (tmp_path / "runs").exists()  # nothing recorded, nothing submitted
    exp = load_experiment(TABLE4, "paper")
    parts = pretrain_parts(exp)
    assert [p.kind for p in parts] == ["pretraining"] * 4  # the paper scale tunes nothing
    tokens = sum(p.cells * p.tokens for p in parts)
    assert tokens == 3 * 8192 * 512 * (100_000 + 100_000 + 300_000 + 500_000)  # seeds x batch x T x steps
    # BERT-large (L24, H1024, F4096) at T = 512, V = 50,265, 15% predicted, no NSP, per token (model.flops_per_token):
    # per layer 4H^2 + 4HF + 4TH = 23,068,672 (Q, output, MLP, attention) and 4H^2 = 4,194,304 (K, V); 23 whole
    # layers, then K, V everywhere and the rest at 15% + 1/512 of the positions: 634,748,108.8; the MLM head
    # 0.15 x (2H^2 + 2HV) = 15,755,980.8; x 3 (forward and backward) = 1,951,512,268.8, near 6 x 335M parameters
    fpt = 1_951_512_268.8
    assert sum(p.cells * p.flops for p in parts) == pytest.approx(tokens * fpt)
    h100 = tokens * fpt / (PEAK_FLOPS["H100 SXM"] * 0.35) / 3600
    assert h100 > 1000  # thousands of GPU-hours, before fine-tuning
    pretraining = next(line for line in out.splitlines() if line.startswith("pretraining   "))
    assert f"{h100:,.0f}" in pretraining.split()
    assert "analytic" in out and "35% MFU" in out and "#SBATCH --array=0-0%1" in out


def test_finetuning_counts_every_fit_and_the_random_init_baseline(capsys):
    exp = load_experiment(TABLE4, "paper")
    parts = {(p.arm, p.how.split(":")[0]): p for p in finetune_parts(exp, "/data")}
    first, other = exp.arms[0].name, exp.arms[1].name
    mnli, mnli_other = parts[(first, "mnli")], parts[(other, "mnli")]
    # Table 10's grid: 3 LRs x 2 batch sizes x 5 seeds, 10 epochs over MNLI's 392,702 + 9,815 dev at 512 tokens;
    # the first arm also fine-tunes from random weights (twice the fits).
    assert mnli_other.tokens == 3 * 2 * 5 * 10 * (392_702 + 9_815) * 512
    assert mnli.tokens == 2 * mnli_other.tokens
    assert parts[(first, "sst2")].how.startswith("sst2: ")  # with --data-dir: the official SST-2, not the stand-in


def test_unreachable_finetuning_data_warns_where_grid_run_refuses(capsys, tmp_path):
    code, out, _ = plan(capsys, TABLE4, "--scale", "paper")
    assert code == 0
    assert "squad1: no offline stand-in and no --data-dir: `grid run` would stop with exit 2" in out
    assert "sst2: without --data-dir it fine-tunes on its stand-in rt_sentiment" in out
    (tmp_path / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / name).write_text("sentence\tlabel\n")
    code, out, _ = plan(capsys, TABLE4, "--scale", "paper", "--data-dir", str(tmp_path))
    assert code == 0
    warned = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(warned) == 3 and all("missing" in w for w in warned)  # squad1, squad2, mnli; SST-2 is there
    assert "train-v1.1.json" in warned[0] and "MNLI/train.tsv" in warned[2]


def test_every_scale_without_scale_and_the_slurm_array_as_submitit_writes_it(capsys):
    code, out, _ = plan(capsys, "experiments/table2_nsp.yaml", "--workers", "16",
                        "--slurm", "slurm_partition=gpu,gpus_per_node=1,timeout_min=2880")
    assert code == 0
    for scale in ("smoke", "demo", "paper"):
        assert f"--scale {scale}: table2_nsp-{scale}" in out
    for line in ("#SBATCH --array=0-15%16", "#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2880", "#SBATCH --signal=USR2@90"):
        assert line in out
    assert "slurm_array_parallelism=16" in out
    assert "a cell outlasts timeout_min=2880" in out  # BERT-base x 1M steps: requeued many times


def test_tuning_trials_stop_at_the_token_budget(tmp_path):
    doc = {"study": "t", "table": 2, "base": "configs/tiny.yaml",
           "scientific": {"data.input_format": ["full_sentences", "doc_sentences"]},
           "nuisance": {"optim.peak_lr": {"low": 1e-4, "high": 3e-3, "log": True}},
           "scales": {"smoke": {"overrides": {"optim.max_steps": 40, "optim.warmup_steps": 2}, "seeds": [0, 1],
                                "tune": {"trials": 3, "tokens": 3000}}}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    parts = pretrain_parts(load_experiment(path, "smoke"))
    per_step = 8 * 64  # tiny.yaml: batch 8 x 64 tokens
    assert [(p.kind, p.cells, p.tokens) for p in parts] == [
        ("tuning", 3, math.ceil(3000 / per_step) * per_step), ("pretraining", 2, 40 * per_step)] * 2


@pytest.mark.parametrize("args", [("--scale", "nope"), ("--slurm", "bogus=1"), ("--slurm", "gpus_per_node=x"),
                                  ("--mfu", "0"), ("--workers", "0")])
def test_bad_input_is_one_line_and_exit_2(capsys, args):
    code, _, err = plan(capsys, TABLE4, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_every_task_has_example_counts_for_the_cost_preview():
    """`grid plan` prices each fine-tuning task from its example counts: a task without them (a new stand-in) would
    stop the preview with a KeyError instead of pricing it."""
    from harness.finetune.tasks import TASKS
    from harness.grid.cost import EXAMPLES

    assert sorted(set(TASKS) - set(EXAMPLES)) == []
