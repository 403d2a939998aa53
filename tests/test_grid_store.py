"""The cell store on SQLite and PostgreSQL (`grid run --store postgresql://...`): every cell claimed exactly once by
concurrent workers, a stopped worker's cell pending at once, and `grid status` / `grid worker` opening the store that
study.json names."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.grid.experiment import load_experiment
from harness.grid.runner import open_store, prepare_study
from harness.grid.store import CellStore

REPO = Path(__file__).resolve().parents[1]


def _drop(url: str, schema: str) -> None:
    CellStore(url, schema).db.conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _cells(n: int) -> list[dict]:
    return [{"cell_id": f"c{i:03d}", "study": "s", "arm": f"arm{i % 3}", "seed": i, "kind": "run",
             "run_dir": f"runs/s/arm{i % 3}/seed_{i}", "config": {"i": i}} for i in range(n)]


def _claim_all(where: str, schema: str, worker: str, out) -> None:
    store = CellStore(where, schema)
    mine = []
    while (cell := store.claim(worker)) is not None:
        mine.append(cell["cell_id"])
        store.finish(cell["cell_id"], worker, "finished")
    out.put(mine)


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_concurrent_claims_take_every_cell_exactly_once(engine, tmp_path, request):
    if engine == "sqlite":
        where, schema = str(tmp_path / "grid.sqlite"), None
    else:
        where, schema = request.getfixturevalue("postgres_url"), f"claims-{os.getpid()}"
        _drop(where, schema)
    CellStore(where, schema).add(_cells(60))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(where, schema, f"host:{k}", out)) for k in range(4)]
    for p in procs:
        p.start()
    claimed = [c for _ in procs for c in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == [f"c{i:03d}" for i in range(60)]  # each once, none lost
    rows = CellStore(where, schema).rows()
    assert {(r["status"], r["attempts"]) for r in rows} == {("finished", 1)}
    if schema:
        _drop(where, schema)


def test_release_hands_back_only_the_stopped_workers_cells(tmp_path):
    store = CellStore(tmp_path / "grid.sqlite")
    store.add(_cells(3))
    a, b = store.claim("host:1"), store.claim("host:2")
    assert store.release(["host:1"]) == 1
    rows = {r["cell_id"]: r for r in store.rows()}
    assert (rows[a["cell_id"]]["status"], rows[a["cell_id"]]["worker"]) == ("pending", None)
    assert (rows[b["cell_id"]]["status"], rows[b["cell_id"]]["worker"]) == ("running", "host:2")
    store.finish(a["cell_id"], "host:1", "finished")  # a stopped worker's late word changes nothing
    assert {r["cell_id"]: r["status"] for r in store.rows()}[a["cell_id"]] == "pending"


def test_a_store_url_other_than_postgresql_or_sqlite_is_one_line_exit_2(tmp_path, capsys):
    code = main(["grid", "run", "experiments/table2_nsp.yaml", "--scale", "smoke", "--runs-dir", str(tmp_path / "r"),
                 "--store", "mysql://u@h/db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --store mysql://u@h/db: expected postgresql")
    assert not (tmp_path / "r").exists()


def _experiment(path: Path) -> Path:
    quick = {"optim.max_steps": 10, "optim.warmup_steps": 2, "train.val_every": 10, "train.log_every": 5,
             "train.num_workers": 0, "train.wandb": "disabled"}
    doc = {"study": path.stem, "table": 2, "base": str(REPO / "configs" / "tiny.yaml"),
           "scientific": {"data.input_format": ["full_sentences", "doc_sentences"]},
           "scales": {"smoke": {"overrides": quick, "seeds": [0, 1]}}}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow  # the PostgreSQL server, and two workers importing Lightning: ~1-2 minutes on 2 cores
def test_two_workers_on_a_postgresql_store_run_every_cell_once_and_status_reads_it(tmp_path, postgres_url, capsys):
    path = _experiment(tmp_path / f"pgstore{os.getpid()}.yaml")
    folder = tmp_path / "runs" / f"{path.stem}-smoke"
    _drop(postgres_url, folder.name)
    prepare_study(load_experiment(path, "smoke"), str(tmp_path / "runs"), None, store_url=postgres_url)
    assert not (folder / "grid.sqlite").exists()  # the cells live in PostgreSQL, as study.json says
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "harness", "grid", "worker", str(folder)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    rows = open_store(folder).rows()
    assert len(rows) == 4 and {(r["status"], r["attempts"]) for r in rows} == {("finished", 1)}
    claims = [line for out in outputs for line in out.splitlines() if line.startswith("[grid ")]
    assert len(claims) == 4
    assert main(["grid", "status", str(folder)]) == 0
    assert capsys.readouterr().out.strip().endswith("finished 4")
    # A re-run names another store: refused, the finished cells live in this one.
    with pytest.raises(Exception, match="was started with the store"):
        prepare_study(load_experiment(path, "smoke"), str(tmp_path / "runs"), None, store_url="sqlite:///x.sqlite")
    # The same study folder name under another runs folder would share the schema's cells: refused.
    with pytest.raises(Exception, match="already holds cells of another runs folder"):
        prepare_study(load_experiment(path, "smoke"), str(tmp_path / "elsewhere"), None, store_url=postgres_url)
    _drop(postgres_url, folder.name)
