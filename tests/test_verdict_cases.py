"""Verdicts on written-down studies: run folders made here from numbers typed in (no training), read back by
analysis.make_table exactly as a grid's results are. Each case is one of issue 25's ways to a wrong verdict:

  - one diverged run of eight erased an arm's perplexity evidence (Table 3 printed "no signal");
  - a downstream and a perplexity claim with the same divergence pattern got different answers;
  - an NSP encoder from random weights at the majority class certified NSP arms that learned less than the other
    shape's random-init encoder;
  - a study whose arms were scored on different yardsticks was compared without a word.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.complete import IncompleteStudyError
from analysis.load import StudyError
from analysis.tables import make_table

REPO = Path(__file__).resolve().parents[1]
DIVERGED = math.inf  # a run whose perplexity (or, as a downstream score, -inf) marks it diverged
TASK = "sst2"


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def write_study(root: Path, table: int, arms: dict[str, dict], seeds: list[int], ppl: dict[str, list[float]],
                unigram: float | dict[str, float] = 100.0, scores: dict[str, list[float]] | None = None,
                random_init: dict[str, list[float]] | None = None, majority: float | None = 50.0,
                config: dict[str, dict] | None = None, short: dict[str, list[float]] | None = None,
                short_unigram: float = 120.0, bigram: float | dict[str, float] | None = None,
                scale: str = "smoke") -> Path:
    """A complete study folder: study.json, and per arm and seed config.yaml, result.json and, with `scores`, the
    fine-tuning summary (one fine-tuning seed per run: the value given). A DIVERGED perplexity makes the run diverged
    (no fine-tuning). `random_init`: arm -> its encoder's random-init score per seed (the arms given are the
    baselines, each arm's own shape first; an arm without one uses the first listed). `unigram` per arm, or one.
    `short`: arm -> the short-context yardstick's perplexity per seed (none recorded when not given). `bigram`: the
    left-bigram reference, per arm or one (none recorded when not given, as in runs made before it)."""
    folder = root / f"table{table}"
    scores, random_init = scores or {}, random_init or {}
    baseline_of = {arm: arm if arm in random_init else next(iter(random_init), arm) for arm in arms}
    meta = {"study": folder.name, "table": table, "scale": scale, "seeds": seeds,
            "arms": [{"name": a, "scientific": s} for a, s in arms.items()],
            "scientific": sorted({k for s in arms.values() for k in s}), "random_init_baseline": baseline_of,
            "finetune": {"tasks": [TASK] if scores else [], "protocol": "smoke"}}
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(meta))
    for arm, scientific in arms.items():
        flat = {"data.max_seq_len": 128, "data.mask_prob": 0.15, "data.vocab_size": 4096, "optim.max_steps": 10,
                **(config or {}).get(arm, {}), **scientific}
        config_text = yaml.safe_dump(_nested(flat))
        for i, seed in enumerate(seeds):
            run = folder / arm / f"seed_{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(config_text)
            diverged = ppl[arm][i] == DIVERGED
            u = unigram[arm] if isinstance(unigram, dict) else unigram
            result = {"status": "diverged" if diverged else "finished", "steps": flat["optim.max_steps"],
                      "tokens_seen": 1000,
                      "epochs": 0.5, "final_yardstick_ppl": None if diverged else ppl[arm][i],
                      "final_valid_ppl": None if diverged else ppl[arm][i], "yardstick_unigram_ppl": u,
                      "diverged_at_step": 5 if diverged else None}
            if bigram is not None:
                result["yardstick_bigram_ppl"] = bigram[arm] if isinstance(bigram, dict) else bigram
            if short is not None:
                result |= {"final_short_yardstick_ppl": None if diverged else short[arm][i],
                           "short_yardstick_unigram_ppl": short_unigram}
            (run / "result.json").write_text(json.dumps(result))
            for kind, table_of in (("finetune", scores), ("finetune-random-init", random_init)):
                if arm in table_of and (kind != "finetune" or not diverged):
                    summary = {"values": [table_of[arm][i]], "median": table_of[arm][i], "data_source": "real",
                               "metric": "accuracy", "protocol": "smoke",
                               **({"majority_score": majority} if majority is not None else {})}
                    (run / kind / TASK).mkdir(parents=True)
                    (run / kind / TASK / "summary.json").write_text(json.dumps(summary))
    return folder


def add_task(folder: Path, task: str, scores: dict[str, list[float]], random_init: dict[str, list[float]],
             majority: float = 50.0) -> None:
    """A second fine-tuning task for a study `write_study` made: its summaries, as `write_study` writes TASK's (none
    for a diverged run), and the task in study.json."""
    meta = json.loads((folder / "study.json").read_text())
    meta["finetune"]["tasks"].append(task)
    (folder / "study.json").write_text(json.dumps(meta))
    for kind, table_of in (("finetune", scores), ("finetune-random-init", random_init)):
        for arm, values in table_of.items():
            for seed, value in zip(meta["seeds"], values):
                run = folder / arm / f"seed_{seed}"
                if kind == "finetune" and json.loads((run / "result.json").read_text())["status"] == "diverged":
                    continue
                summary = {"values": [value], "median": value, "data_source": "real", "metric": "accuracy",
                           "protocol": "smoke", "majority_score": majority}
                (run / kind / task).mkdir(parents=True)
                (run / kind / task / "summary.json").write_text(json.dumps(summary))


def verdicts(folder: Path) -> dict[str, str]:
    return make_table(folder).verdicts.set_index("claim")["verdict"].to_dict()


BATCH = {"b256": {"optim.batch_size": 16}, "b2k": {"optim.batch_size": 128}, "b8k": {"optim.batch_size": 512}}


def test_one_diverged_run_of_eight_counts_against_its_arm_without_erasing_it(tmp_path):
    """Table 3 at 8 seeds, unigram 100: the 8K arm's ratio is ~0.035 on 7 seeds and its seed 3 diverged. 2K beats
    8K on all 8 seeds (the diverged one included) and 256 on all 8, so "medium batch lowest ppl" is reproduced; 8K
    beats 256 on 7 seeds and loses the diverged one, so "bigger batch lower ppl" is inconclusive (sign interval of 8
    seeds at 99.2%: [-inf, ...]; a rank interval needs at least 9 seeds to leave the diverged run out). The 8K arm's
    signal is asked of its 7 finished runs. Before issue 25: both printed "no signal" ("no ppl / unigram ratio below
    0.9 shown")."""
    ppl = {"b256": [4.02, 3.98, 4.05, 3.99, 4.01, 4.03, 3.97, 4.00],
           "b2k": [3.30, 3.28, 3.33, 3.29, 3.31, 3.32, 3.27, 3.30],
           "b8k": [3.52, 3.49, 3.55, DIVERGED, 3.50, 3.53, 3.48, 3.51]}
    t = make_table(write_study(tmp_path, 3, BATCH, list(range(8)), ppl))
    v = t.verdicts.set_index("claim")["verdict"]
    assert v["medium_batch_lowest_ppl"] == "reproduced"
    assert v["bigger_batch_lower_ppl"] == "inconclusive"
    row = t.claims[(t.claims["arm_a"] == "b8k") & (t.claims["arm_b"] == "b256")].iloc[0]
    assert row["method"] == "sign (order statistics)" and row["gain_lo"] == -math.inf
    assert math.isclose(row["level"], 1 - 2 / 256)
    assert "at least 9 paired seeds before a rank interval can resolve it toward reproduced" in row["why"], row["why"]
    d = t.detail[(t.detail["arm"] == "b8k") & (t.detail["metric"] == "ppl")].iloc[0]
    # the one-sided 95% t bound on the 7 finished runs' log ratios: exp(mean + t(0.95, 6) sd / sqrt 7)
    assert math.isclose(d["unigram_ratio_hi"], 0.035291, rel_tol=1e-4), d["unigram_ratio_hi"]
    assert "7 of 8 runs finished, 1 diverged" in next(n for n in t.notes if n.startswith("Signal"))


def test_the_same_divergence_pattern_gets_the_same_answer_downstream_and_in_perplexity(tmp_path):
    """Table 2, FULL-SENTENCES vs SEGMENT-PAIR, one FULL-SENTENCES run diverged (ppl +inf, score -inf). Perplexity
    (supporting) and SST-2 (deciding) rows of each comparison must both show signal or both not: at 10, 8, 5 and 3
    seeds the finished runs show the arm learned. Before issue 25, 10 seeds gave downstream a verdict and perplexity
    "no signal"; before issue 34, 5 seeds gave both "no signal" (an order-statistic bound needed all 5 runs)."""
    fmt = {"seg": {"data.input_format": "segment_pair_nsp"}, "full": {"data.input_format": "full_sentences"}}
    for n, signal in ((10, True), (8, True), (5, True), (3, True)):
        seeds = list(range(n))
        ppl = {"seg": [40.0 + 0.1 * s for s in seeds], "full": [38.0 + 0.1 * s for s in seeds]}
        scores = {"seg": [75.0 + 0.2 * s for s in seeds], "full": [76.0 + 0.2 * s for s in seeds]}
        ppl["full"][1] = DIVERGED
        base = {"seg": [60.0 + 0.1 * s for s in seeds], "full": [61.0 + 0.1 * s for s in seeds]}
        t = make_table(write_study(tmp_path / str(n), 2, fmt, seeds, ppl, scores=scores, random_init=base))
        rows = t.claims[t.claims["arm_a"] == "full"].set_index("metric")
        no_signal = {metric: r["verdict"] == "no signal" for metric, r in rows.iterrows()}
        assert no_signal == {"ppl": not signal, f"finetune/{TASK}": not signal}, (n, no_signal)


def test_a_random_init_baseline_at_the_majority_class_cannot_certify_signal(tmp_path):
    """The NSP encoder from random weights sits at the majority class (55.8 on every seed, as docs/results.md
    measured); the no-NSP encoder from random weights scores 68.7 / 68.5 / 69.7. SEGMENT-PAIR's 66.0 / 66.5 / 66.2
    beat the first but not the second, and its ppl / unigram is 0.95 (no evidence there either): SEGMENT-PAIR shows
    no signal, so no_nsp_not_worse is "no signal". Before, the degenerate baseline passed it and the claim read
    "reproduced" (FULL-SENTENCES +9 points)."""
    fmt = {"seg": {"data.input_format": "segment_pair_nsp"}, "full": {"data.input_format": "full_sentences"}}
    seeds = [0, 1, 2]
    ppl = {"seg": [95.0, 95.5, 95.2], "full": [38.0, 38.4, 38.1]}
    scores = {"seg": [66.0, 66.5, 66.2], "full": [75.0, 75.6, 75.2]}
    base = {"seg": [55.8, 55.8, 55.8], "full": [68.7, 68.5, 69.7]}
    t = make_table(write_study(tmp_path, 2, fmt, seeds, ppl, scores=scores, random_init=base, majority=55.8))
    assert t.verdicts.set_index("claim")["verdict"]["no_nsp_not_worse"] == "no signal"
    why = t.claims[(t.claims["arm_b"] == "seg") & (t.claims["metric"] == f"finetune/{TASK}")].iloc[0]["why"]
    assert why.startswith("seg (") and "not above full's random-init baseline on SST-2" in why, why
    assert t.majority == {f"finetune/{TASK}": 55.8}
    wide = t.wide.set_index("arm")
    assert wide.loc["seg, random init (degenerate: at the majority class)", "SST-2 ours"] == "55.8 [55.8, 55.8]"
    assert wide.loc["majority class", "SST-2 ours"] == "55.8"


def test_a_degenerate_baseline_with_no_other_shape_gives_no_signal_baseline_degenerate(tmp_path):
    """Table 1: both arms SEGMENT-PAIR+NSP, so one encoder shape, whose random-init encoder sits at the majority
    class (50.9 / 50.9 / 51.1 vs 50.9), and both arms sit at ppl / unigram 0.95. Dynamic 80.1 / 80.4 / 80.2 vs static
    79.9 / 80.0 / 80.3: the interval rule alone would say "reproduced"; with nothing to certify that either arm
    learned, the claim is "no signal", reason "baseline degenerate"."""
    masking = {"static": {"data.masking": "static"}, "dynamic": {"data.masking": "dynamic"}}
    seeds = [0, 1, 2]
    ppl = {"static": [95.0, 95.5, 95.2], "dynamic": [94.0, 94.4, 94.1]}
    scores = {"static": [79.9, 80.0, 80.3], "dynamic": [80.1, 80.4, 80.2]}
    t = make_table(write_study(tmp_path, 1, masking, seeds, ppl, scores=scores,
                               random_init={"static": [50.9, 50.9, 51.1]}, majority=50.9))
    v = t.verdicts.set_index("claim").loc["dynamic_not_worse"]
    assert v["verdict"] == "no signal" and "baseline degenerate" in v["why"], v["why"]


NSP = {"seg": {"data.input_format": "segment_pair_nsp"}, "full": {"data.input_format": "full_sentences"}}
MASKING = {"static": {"data.masking": "static"}, "dynamic": {"data.masking": "dynamic"}}


@pytest.mark.parametrize("evidence", ["downstream", "perplexity"])
@pytest.mark.parametrize("learned", [True, False])
def test_one_diverged_run_of_three_leaves_the_finished_two_to_show_signal(tmp_path, evidence, learned):
    """Issue 34: 3 seeds, seed 1 of the arm under test diverged. Its two finished runs are asked whether it learned:
    downstream (Table 2, FULL-SENTENCES vs SEGMENT-PAIR; both at ppl / unigram ~0.95, so the task is the only
    evidence) 10 points above its random-init baseline, or in perplexity (Table 1, dynamic vs static, no fine-tuning)
    at ppl / unigram 0.45. Learned: not "no signal"; the comparison keeps the diverged run as the worst value, so at 3
    seeds it has no interval and the claim is "inconclusive", naming the seeds a rank interval would need. At the
    random-init level (gains +0.2 / -0.3) or at ppl / unigram 0.95-0.96: "no signal", printing "2 of 3 runs finished,
    1 diverged" beside the bound. Before, the diverged run left an order-statistic bound of 3 runs at 87.5% at most,
    so the arm read "no signal" either way."""
    if evidence == "downstream":
        arm, claim = "full", "no_nsp_not_worse"
        ppl = {"seg": [96.0, 96.4, 96.2], "full": [95.0, DIVERGED, 95.5]}
        scores = {"seg": [70.0, 70.5, 70.2], "full": [71.0, 0.0, 71.3] if learned else [61.2, 0.0, 60.9]}
        folder = write_study(tmp_path, 2, NSP, [0, 1, 2], ppl, scores=scores,
                             random_init={"seg": [60.0, 60.1, 60.2], "full": [61.0, 61.1, 61.2]})
    else:
        arm, claim = "dynamic", "dynamic_not_worse"
        ppl = {"static": [46.0, 46.4, 46.1], "dynamic": [45.0, DIVERGED, 45.3] if learned else [95.0, DIVERGED, 96.0]}
        folder = write_study(tmp_path, 1, MASKING, [0, 1, 2], ppl)
    t = make_table(folder)
    v = t.verdicts.set_index("claim").loc[claim]
    if learned:
        assert v["verdict"] == "inconclusive", v["why"]
        assert "n = 3 with a diverged run: a rank interval reaches at most 75.0%, not 95%" in v["why"], v["why"]
        assert "at least 9 paired seeds" in v["why"], v["why"]  # 1 - 2 P(Binomial(n, 1/2) <= 1) >= 95% from n = 9
        note = next(n for n in t.notes if n.startswith("Signal"))
        assert f"{arm}: " in note and "2 of 3 runs finished, 1 diverged" in note, note
    else:
        assert v["verdict"] == "no signal", v["why"]
        assert f"{arm} (" in v["why"] and "2 of 3 runs finished, 1 diverged" in v["why"], v["why"]


def test_a_task_with_a_degenerate_baseline_counts_between_arms_that_learned_on_another(tmp_path):
    """Issue 34: two tasks. On SST-2 both encoders from random weights sit at the majority class (50.0 on every seed):
    degenerate, it certifies nothing. On TREC every arm is 10 points above its random-init baseline, so both arms
    show signal there (ppl / unigram ~0.95: the task is the only evidence). The claim is decided on both tasks
    (FULL-SENTENCES +1.0-1.1 on each: reproduced), and the table marks SST-2's random-init rows degenerate. Before,
    SST-2's degenerate baseline made both arms "no signal" and the claim with them, although TREC showed they
    learned."""
    ppl = {"seg": [96.0, 96.4, 96.2], "full": [95.0, 95.4, 95.5]}
    scores = {"seg": [70.0, 70.5, 70.2], "full": [71.0, 71.6, 71.2]}
    folder = write_study(tmp_path, 2, NSP, [0, 1, 2], ppl, scores=scores,
                         random_init={"seg": [50.0, 50.0, 50.0], "full": [50.0, 50.0, 50.0]}, majority=50.0)
    add_task(folder, "trec", scores={"seg": [70.0, 70.4, 70.3], "full": [71.1, 71.5, 71.2]},
             random_init={"seg": [60.0, 60.3, 60.1], "full": [61.0, 61.2, 61.1]})
    t = make_table(folder)
    v = t.verdicts.set_index("claim").loc["no_nsp_not_worse"]
    assert v["verdict"] == "reproduced", v["why"]
    deciding = t.claims[(t.claims["claim"] == "no_nsp_not_worse") & (t.claims["role"] == "primary")]
    assert dict(zip(deciding["metric"], deciding["verdict"])) == {f"finetune/{TASK}": "reproduced",
                                                                 "finetune/trec": "reproduced"}
    baselines = t.wide[t.wide["paper row"] == "no pretraining (random init)"]["arm"]
    assert list(baselines) == ["seg, random init (degenerate on SST-2: at the majority class)",
                               "full, random init (degenerate on SST-2: at the majority class)"], list(baselines)


FORMATS = {"full": {"data.input_format": "full_sentences"}, "doc": {"data.input_format": "doc_sentences"}}


@pytest.mark.parametrize("short, verdict", [
    # windows: DOC 38.0-38.4 vs FULL 40.0-40.4, not worse (gain +2.0 > -0.40, 1% of FULL's 40.2); single sentences:
    # DOC 66.0-66.5 vs FULL 60.0-60.3, 10% worse (gain -6.1, below -0.60 at 95%): the yardsticks disagree
    ({"full": [60.0, 60.3, 60.1], "doc": [66.0, 66.5, 66.2]}, "format-dependent"),
    # single sentences: DOC 59.0-59.3 vs FULL 60.0-60.3: not worse on either, so the claim stands
    ({"full": [60.0, 60.3, 60.1], "doc": [59.0, 59.3, 59.2]}, "reproduced"),
])
def test_a_table2_perplexity_claim_is_judged_on_both_yardsticks(tmp_path, short, verdict):
    """Without downstream scores (as at demo scale) doc_not_worse_than_full rests on perplexity. Where the windows
    (FULL-SENTENCES' own kind of input) and single sentences disagree, the verdict says so with both intervals instead
    of picking the windows; before, the short yardstick did not exist and the windows alone said "reproduced"."""
    ppl = {"full": [40.0, 40.4, 40.2], "doc": [38.0, 38.4, 38.1]}
    t = make_table(write_study(tmp_path, 2, FORMATS, [0, 1, 2], ppl, short=short))
    v = t.verdicts.set_index("claim").loc["doc_not_worse_than_full"]
    assert v["verdict"] == verdict, v["why"]
    if verdict == "format-dependent":
        assert "windows: reproduced (DOC-SENTENCES vs FULL-SENTENCES +2.03 [" in v["why"], v["why"]
        assert "single sentences: contradicted (DOC-SENTENCES vs FULL-SENTENCES -6.10 [" in v["why"], v["why"]
    wide = t.wide.set_index("arm")
    assert wide.loc["doc", "ppl (short yardstick) ours"] == f"{sorted(short['doc'])[1]:.2f} " \
        f"[{min(short['doc']):.2f}, {max(short['doc']):.2f}]"
    assert wide.loc["doc", "short ppl / unigram"] == f"{sorted(short['doc'])[1] / 120:.2f}"


@pytest.mark.parametrize("config, unigram, named", [
    ({"b2k": {"data.max_seq_len": 256}}, 100.0, "data.max_seq_len"),
    ({"b256": {"data.max_seq_len": 64}}, 100.0, "data.max_seq_len"),
    ({"b8k": {"data.vocab_size": 8192}}, 100.0, "data.vocab_size"),
    ({}, {"b256": 100.0, "b2k": 100.0, "b8k": 120.0}, "yardstick_unigram_ppl"),
    ({}, 100.0, "yardstick_bigram_ppl"),
])
def test_a_study_on_two_yardsticks_is_refused_at_load_in_one_line(tmp_path, config, unigram, named):
    """Arms that differ in a setting the yardstick depends on (sequence length, vocabulary), or record
    different unigram references, were scored on different yardsticks: `analysis report` exits 2 with one line
    naming the setting and the arms."""
    ppl = {"b256": [4.0, 4.1], "b2k": [3.3, 3.4], "b8k": [3.5, 3.6]}
    bigram = {"b256": 16.4, "b2k": 16.4, "b8k": 17.0} if named == "yardstick_bigram_ppl" else None
    folder = write_study(tmp_path, 3, BATCH, [0, 1], ppl, unigram=unigram, config=config, bigram=bigram)
    with pytest.raises(StudyError, match=named):
        make_table(folder)
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "--quiet", str(folder)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert named in proc.stderr and "b256" in proc.stderr, proc.stderr


def test_a_baseline_seed_without_its_random_init_summary_is_named_not_skipped(tmp_path):
    """The random-init baseline of seed 1 is missing (its pretraining diverged, and the grid used to skip it): the
    study is incomplete, naming the summary, rather than checked on seeds 0 and 2 alone."""
    fmt = {"seg": {"data.input_format": "segment_pair_nsp"}, "full": {"data.input_format": "full_sentences"}}
    ppl = {"seg": [40.0, 40.5, 40.2], "full": [38.0, 38.4, 38.1]}
    scores = {"seg": [70.0, 70.5, 70.2], "full": [75.0, 75.6, 75.2]}
    folder = write_study(tmp_path, 2, fmt, [0, 1, 2], ppl, scores=scores,
                         random_init={"seg": [60.0, 60.1, 60.2], "full": [61.0, 61.1, 61.2]})
    (folder / "seg" / "seed_1" / "finetune-random-init" / TASK / "summary.json").unlink()
    with pytest.raises(IncompleteStudyError, match=r"seg/seed_1/finetune-random-init/sst2/summary.json: missing"):
        make_table(folder)


def test_a_fine_tuning_seed_without_a_finite_score_counts_as_the_worst(tmp_path):
    """Run seed 2 of FULL-SENTENCES fine-tuned twice: 75.4 and a diverged fine-tune (no score). Its number is -inf,
    the worst, not 75.4 (the finite one alone), so the cell's minimum reads -inf."""
    fmt = {"seg": {"data.input_format": "segment_pair_nsp"}, "full": {"data.input_format": "full_sentences"}}
    ppl = {"seg": [40.0, 40.5, 40.2], "full": [38.0, 38.4, 38.1]}
    scores = {"seg": [70.0, 70.5, 70.2], "full": [75.0, 75.6, 75.2]}
    folder = write_study(tmp_path, 2, fmt, [0, 1, 2], ppl, scores=scores,
                         random_init={"seg": [60.0, 60.1, 60.2], "full": [61.0, 61.1, 61.2]})
    path = folder / "full" / "seed_2" / "finetune" / TASK / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "values": [75.4, None]}))
    d = make_table(folder).detail.set_index(["arm", "metric"]).loc[("full", f"finetune/{TASK}")]
    assert (d["min"], d["median"], d["max"]) == (-math.inf, 75.0, 75.6)


def _curves(folder: Path) -> None:
    """A two-row metrics.csv per run (steps 5 and 10), so the learning-curve plot has something to draw."""
    for run in folder.glob("*/seed_*"):
        ppl = json.loads((run / "result.json").read_text())["final_yardstick_ppl"] or 1e9
        (run / "metrics.csv").write_text(f"step,train/tokens,val/yardstick_ppl\n5,500,{2 * ppl}\n10,1000,{ppl}\n")


def test_the_table_and_the_plot_show_both_references_unigram_and_left_bigram(tmp_path):
    """Issue 23 item 5: beside the no-context reference (unigram, 1001.9) the table prints the local-context one (the
    left-bigram count model at the same positions, 164.2 = 0.164 x unigram), and the learning-curve plot draws both as
    horizontal lines. Runs made before the bigram was recorded say so. Before, the note and the plot had the unigram
    only."""
    from analysis.plots import learning_curves_figure

    ppl = {"b256": [400.0, 410.0], "b2k": [300.0, 310.0], "b8k": [350.0, 360.0]}
    t = make_table(write_study(tmp_path / "with", 3, BATCH, [0, 1], ppl, unigram=1001.9, bigram=164.2))
    note = next(n for n in t.notes if n.startswith("ppl (yardstick)"))
    assert ("no-context reference (unigram) 1001.9; local-context reference (left bigram) 164.2 = 0.164 x unigram"
            in note), note
    _curves(t.study.dir)
    lines = {line.get_label(): line.get_ydata()[0] for line in learning_curves_figure(t).axes[0].lines
             if "reference" in line.get_label()}
    assert lines == {"no-context reference (unigram)": 1001.9,
                     "local-context reference (left bigram)": 164.2}, lines

    old = make_table(write_study(tmp_path / "old", 3, BATCH, [0, 1], ppl, unigram=1001.9))
    note = next(n for n in old.notes if n.startswith("ppl (yardstick)"))
    assert "local-context reference (left bigram) not recorded" in note, note


def test_settings_that_differ_from_the_papers_recipe_are_printed_under_the_table(tmp_path):
    """Issue 23 item 3: every setting of the runs' config.yaml that differs from the paper's recipe (analysis.paper
    RECIPE) is printed under the table as "demo-scale deviations from the paper's recipe", `key: ours (paper: theirs;
    source)`, by section, except the study's scientific factor (data.input_format here); a setting the arms differ in
    (a peak LR tuned per arm) as a range. A setting at the paper's value (mask rate 0.15) is not listed; a study at the
    paper's recipe lists none. Before, nothing said a demo table ran a tiny pre-LN model at 128 tokens."""
    from analysis.paper import RECIPE
    from analysis.render import deviation_lines, html, latex, markdown

    ppl = {"full": [40.0, 40.4, 40.2], "doc": [38.0, 38.4, 38.1]}
    demo = {"model.preset": "tiny", "model.norm": "pre", "optim.max_steps": 10}
    config = {"full": {**demo, "optim.peak_lr": 1e-3}, "doc": {**demo, "optim.peak_lr": 2e-3}}
    t = make_table(write_study(tmp_path / "demo", 2, FORMATS, [0, 1, 2], ppl, config=config, scale="demo"))
    keys = [line.split(":")[0] for line in deviation_lines(t)]
    assert keys == ["data.max_seq_len", "data.vocab_size", "model.norm", "model.preset", "optim.max_steps",
                    "optim.peak_lr"], keys
    lines = dict(line.split(": ", 1) for line in deviation_lines(t))
    assert lines["data.max_seq_len"].startswith("128 (paper: 512; "), lines
    assert lines["model.preset"].startswith("tiny (paper: base; "), lines
    assert lines["optim.max_steps"].startswith("10 (paper: 1,000,000; "), lines
    assert lines["optim.peak_lr"].startswith("0.001–0.002 (paper: 0.0001; "), lines
    md = markdown(t)
    block = md.index("demo-scale deviations from the paper's recipe")
    assert md.index("| paper row |") < block < md.index("### The paper's claims"), md
    assert "- optim.peak_lr: 0.001–0.002 (paper: 0.0001; " in md
    assert "model.norm: pre (paper: post" in latex(t) and "model.norm: pre (paper: post" in html(t)

    at_recipe = {k: v for k, (v, _) in RECIPE.items()}
    recipe = {arm: at_recipe for arm in FORMATS}
    t = make_table(write_study(tmp_path / "paper", 2, FORMATS, [0, 1, 2], ppl, config=recipe, scale="paper"))
    assert deviation_lines(t) == []
    assert "paper-scale deviations from the paper's recipe: none" in markdown(t)


def test_every_recipe_key_is_a_config_field():
    """A key of the paper's recipe that no config has would never be compared, and so never printed."""
    from analysis.paper import RECIPE, RECIPE_OF_TABLE
    from harness.config import Config, flatten

    fields = set(flatten(Config().to_dict()))
    assert [k for table in (RECIPE, *RECIPE_OF_TABLE.values()) for k in table if k not in fields] == []


def test_fine_tuning_settings_that_differ_from_the_papers_are_printed_under_the_table(tmp_path):
    """Issue 31: a demo fine-tunes on a few hundred examples for a few epochs at one LR, a budget that decides what
    its columns measure, so each protocol setting (as the summaries record it) that differs from the paper's Table
    10 is listed with the pretraining ones, as `finetune.<setting>`; a task whose paper recipe differs (RACE's stand-in)
    is held to its own, and named where the settings differ between tasks. The paper's own protocol lists none."""
    from analysis.render import deviation_lines

    def protocol(folder: Path, settings: dict) -> None:
        for summary in folder.glob("*/seed_*/finetune*/*/summary.json"):
            summary.write_text(json.dumps({**json.loads(summary.read_text()), "protocol_settings": settings}))

    ppl = {"full": [40.0, 40.4, 40.2], "doc": [38.0, 38.4, 38.1]}
    scores = {"full": [60.0, 61.0, 62.0], "doc": [61.0, 62.0, 63.0]}
    demo = {"max_train_examples": 500, "epochs": 10, "lrs": [3e-4], "batch_sizes": [16], "seeds": 1,
            "max_seq_len": 128, "warmup_ratio": 0.06}
    folder = write_study(tmp_path / "demo", 2, FORMATS, [0, 1, 2], ppl, scores=scores, random_init={"full": [50] * 3})
    add_task(folder, "gap_sentence", scores, {"full": [40.0] * 3}, majority=25.0)
    protocol(folder, demo)
    lines = dict(line.split(": ", 1) for line in deviation_lines(make_table(folder)))
    assert lines["finetune.max_train_examples"].startswith("500 (paper: all; Table 10"), lines
    assert lines["finetune.seeds"].startswith("1 (paper: 5; "), lines
    assert lines[f"finetune.lrs ({TASK})"].startswith("0.0003 (paper: 1e-05, 2e-05, 3e-05; "), lines
    assert lines["finetune.lrs (gap_sentence)"].startswith("0.0003 (paper: 1e-05; fairseq's RACE recipe"), lines
    assert "finetune.epochs" not in lines and f"finetune.epochs ({TASK})" not in lines  # 10, as the paper's GLUE
    assert lines["finetune.epochs (gap_sentence)"].startswith("10 (paper: 5; "), lines

    paper = {"max_train_examples": 0, "epochs": 10, "lrs": [1e-5, 2e-5, 3e-5], "batch_sizes": [16, 32], "seeds": 5,
             "max_seq_len": 512}
    folder = write_study(tmp_path / "paper", 2, FORMATS, [0, 1, 2], ppl, scores=scores, random_init={"full": [50] * 3})
    protocol(folder, paper)
    assert [line for line in deviation_lines(make_table(folder)) if line.startswith("finetune.")] == []
