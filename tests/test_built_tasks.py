"""Tasks built from held-out text (harness.finetune.built): what each example is, that dev never shares a document
with train, that the build is a pure function of the text, and that both run through the fine-tuning loop."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import yaml

from harness.config import Config, ModelConfig, load_config
from harness.finetune import built
from harness.finetune.built import GAP, GAP_OPTIONS, GAP_WINDOW, RELATION_GAP, RELATION_LABELS
from harness.finetune.runner import finetune
from harness.finetune.tasks import get_task, load_task_data

DOCS = [[f"doc{d} sentence {s} words." for s in range(23)] for d in range(6)]


@pytest.mark.parametrize("window", [GAP_WINDOW, 5])
def test_gap_sentence_removes_the_middle_sentence_and_draws_distractors_from_other_documents(window):
    examples = built.gap_sentence(DOCS, seed=0, window=window)
    assert len(examples) == 6 * (23 // window)
    for e in examples:
        before, after = e.context.split(f" {GAP} ")
        doc = int(before.split()[0].removeprefix("doc"))
        first = int(before.split()[2])
        assert len(e.options) == GAP_OPTIONS and len(set(e.options)) == GAP_OPTIONS
        assert e.options[e.label] == DOCS[doc][first + window // 2]
        assert after.endswith(DOCS[doc][first + window - 1])
        assert all(not o.startswith(f"doc{doc} ") for i, o in enumerate(e.options) if i != e.label)
    assert Counter(e.label for e in examples).keys() == set(range(GAP_OPTIONS))  # the answer's position varies
    assert built.gap_sentence(DOCS, seed=0, window=window) == examples


def test_sentence_relation_labels_say_where_b_comes_from():
    examples = built.sentence_relation(DOCS, seed=0)
    assert len(examples) == 6 * 22
    for e in examples:
        doc, index = (int(x) for x in e.text_a.removeprefix("doc").removesuffix(" words.").split(" sentence "))
        label = RELATION_LABELS[e.label]
        if label == "next":
            assert e.text_b == DOCS[doc][index + 1]
        elif label == "same_document":
            assert e.text_b in DOCS[doc] and abs(DOCS[doc].index(e.text_b) - index) >= RELATION_GAP
        else:
            assert e.text_b not in DOCS[doc]
    counts = Counter(e.label for e in examples)
    assert min(counts.values()) > len(examples) / 5  # drawn uniformly: no class starved


@pytest.fixture(scope="module")
def tiny_data():
    # The tiny corpus holds out 2 documents by default; a quarter of its documents gives each part several.
    return load_config(None, ["data.corpus=tiny", "data.valid_fraction=0.25"]).data


@pytest.mark.parametrize("name", sorted(built.BUILT))
def test_built_task_splits_by_document_and_is_cached(tiny_data, name):
    train, dev, describes = built.load_built(name, tiny_data)
    assert train and dev and "built from held-out text" in describes
    text = (lambda e: [e.context, *e.options]) if name == "gap_sentence" else (lambda e: [e.text_a, e.text_b])
    train_sentences = {t for e in train for t in text(e)}
    # no dev sentence (nor passage) in train; short ones ("Oh!") recur across documents
    assert not any(t in train_sentences for e in dev for t in text(e) if len(t) > 30)
    assert built.load_built(name, tiny_data) == (train, dev, describes)  # read back from the cache as it was built


def test_gap_window_is_part_of_the_task_and_of_its_cache_key(tiny_data):
    train3, _, describes3 = built.load_built("gap_sentence", tiny_data)
    train5, _, describes5 = built.load_built("gap_sentence", tiny_data, gap_window=5)
    assert f"a passage of {GAP_WINDOW} sentences" in describes3 and "a passage of 5 sentences" in describes5
    assert 0 < len(train5) < len(train3)  # fewer, longer passages
    assert built.load_built("gap_sentence", tiny_data)[0] == train3  # the other window's cache left it alone


def test_a_corpus_holding_out_too_few_documents_is_one_line(tmp_path):
    data = load_config(None, ["data.corpus=tiny"]).data  # 2 held-out documents: 1 per part
    with pytest.raises(Exception, match="needs at least 2 in each of its train and dev parts"):
        built.load_built("gap_sentence", data)


@pytest.mark.parametrize("name", sorted(built.BUILT))
def test_built_tasks_fine_tune_end_to_end(tmp_path, tiny_data, name):
    from tests.test_finetune import make_run

    run = make_run(tmp_path)  # its encoder, with the tiny corpus as the run's own (whose held-out text is used)
    cfg = Config(data=dataclasses.replace(tiny_data, input_format="full_sentences"),
                 model=ModelConfig(preset="tiny", max_positions=128))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    summary = finetune(run, name, protocol="smoke", progress=False)
    assert summary["status"] == "complete" and summary["data_source"].startswith("stand-in: ")
    assert summary["majority_score"] is not None and 0 <= summary["median"] <= 100
    data = load_task_data(get_task(name), None, tiny_data)
    assert summary["n_dev"] == len(data.dev)
