"""The learning-frontier plot's data: the series `curve` builds from a candidate's run folder, the committed data file
and the plot drawn from it alone (harness/benchmarks/frontier.py)."""

import csv
import json

import pytest

from harness.benchmarks import frontier

TOKENS_PER_STEP = 2000  # a synthetic run: every step sees the same tokens, so the true count at any step is known


def _write_run(out, name, *, max_steps, log_every, val_every, val_before_train=False):
    """runs/frontier/<name>/seed_0/{metrics.csv,cpu.csv,result.json} as a candidate writes them: train/tokens every
    log_every steps and at the last, val/yardstick_ppl at step 0 and every val_every (and at the last), CPU-seconds at
    each validation. `val_before_train`: a step's validation row comes before its train row in metrics.csv."""
    run_dir = out / name / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"yardstick_unigram_ppl": 1000.0, "yardstick_bigram_ppl": 164.0}))
    val_steps = sorted({0, *range(val_every, max_steps + 1, val_every), max_steps})
    rows = []
    for step in range(max_steps + 1):
        train = [{"step": step, "train/tokens": step * TOKENS_PER_STEP}] if step and (
            step % log_every == 0 or step == max_steps) else []
        val = [{"step": step, "val/yardstick_ppl": 1000.0 - step / 10}] if step in val_steps else []
        rows += val + train if val_before_train else train + val
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train/tokens", "val/yardstick_ppl"])
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "cpu.csv").write_text("step,train_cpu_s\n" + "".join(f"{s},{s * 0.1:.2f}\n" for s in val_steps))


@pytest.mark.parametrize("log_every, val_every, val_before_train", [
    (50, 60, False),  # demo-t3-bs128: most validations fall between logged rows
    (50, 20, False),  # demo-t3-bs512
    (50, 500, True),  # every validation on a logged step, its row written first
])
def test_tokens_never_decrease_along_a_curve(tmp_path, monkeypatch, log_every, val_every, val_before_train):
    monkeypatch.setattr(frontier, "OUT", tmp_path)
    _write_run(tmp_path, "cand", max_steps=720, log_every=log_every, val_every=val_every,
               val_before_train=val_before_train)
    points = frontier.curve("cand")
    steps = [p["step"] for p in points]
    assert steps == sorted({0, *range(val_every, 721, val_every), 720})
    tokens = [p["tokens"] for p in points]
    assert all(a <= b for a, b in zip(tokens, tokens[1:])), tokens
    # the tokens at a validation between logged rows: interpolated, exact here since every step sees the same count
    assert tokens == [s * TOKENS_PER_STEP for s in steps]
    assert points[-1] == {"step": 720, "tokens": 720 * TOKENS_PER_STEP, "cpu_min": 1.2, "ratio": 0.928}


def test_every_candidate_is_in_one_panel_and_every_chosen_one_is_a_candidate():
    placed = [name for panel in frontier.PANELS for name in panel.names]
    assert sorted(placed) == sorted(frontier.CANDIDATES)
    assert {p.baseline for p in frontier.PANELS} - {None} <= set(frontier.CANDIDATES)
    assert set(frontier.CHOSEN) <= set(frontier.CANDIDATES)


def test_the_plot_is_redrawn_from_the_data_file_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(frontier, "OUT", tmp_path / "runs")
    names = ["wsd-1e-3", "wsd-mask40", "demo-t3-bs128", "diag-doc"]  # diag-doc's baseline is missing: not drawn
    for name in names:
        _write_run(tmp_path / "runs", name, max_steps=300, log_every=50, val_every=60)
    results = {n: json.loads((tmp_path / "runs" / n / "seed_0" / "result.json").read_text()) for n in names}
    data = frontier.curves_data({n: frontier.curve(n) for n in names}, results)
    frontier.write_data(data, tmp_path / "frontier.json")
    assert json.loads((tmp_path / "frontier.json").read_text()) == data
    assert data["candidates"]["wsd-mask40"]["lever"].startswith("Mask rate")
    assert data["candidates"]["wsd-mask40"]["bigram_ratio"] == 0.164

    frontier.redraw(tmp_path / "frontier.json", tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
