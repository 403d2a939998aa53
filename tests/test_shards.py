"""The shard machinery's own parts: blocks of whole records, and the ordered, bounded map over processes."""

import os
import signal
import subprocess
import sys

import pytest

import harness.data.shards as shards
from harness.data.shards import blocks, ordered_map


@pytest.mark.parametrize("sep", [b"\n", b"\n\n"])
def test_blocks_are_whole_records_that_join_to_the_file(tmp_path, monkeypatch, sep):
    """Records shorter and longer than a block: every block but the last ends with the separator, none cuts a record,
    and together they are the file."""
    monkeypatch.setattr(shards, "BLOCK_BYTES", 64)
    records = [f"r{i} " * n for i, n in enumerate([1, 3, 40, 2, 100, 1, 7])]
    data = sep.join(r.encode() for r in records) + b"\n"
    (tmp_path / "f").write_bytes(data)
    got = list(blocks(tmp_path / "f", sep))
    assert b"".join(got) == data
    assert len(got) > 3
    assert all(b.endswith(sep) for b in got[:-1])
    assert sum(b.count(sep) + (not b.endswith(sep)) for b in got) == len(records)


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_ordered_map_keeps_order_on_several_processes():
    """More items than the window: results come back in input order, from processes other than this one; with one
    worker, here."""
    results = list(ordered_map(_pid_and_square, range(50), workers=2))
    assert [r for _, r in results] == [x * x for x in range(50)]
    assert os.getpid() not in {pid for pid, _ in results}
    assert {pid for pid, _ in ordered_map(_pid_and_square, range(3), workers=1)} == {os.getpid()}


def test_ordered_map_makes_no_pool_for_no_items(monkeypatch):
    """Nothing to map starts no process; one item still goes to the pool."""
    assert list(ordered_map(str, iter([]), 2)) == []
    assert list(ordered_map(str, [0], 2)) == ["0"]
    monkeypatch.setattr(shards.multiprocessing, "Pool", lambda *args, **kwargs: pytest.fail("a pool for no items"))
    assert list(ordered_map(str, [], 2)) == []


# A pool stopped while its workers start, under a parent whose SIGTERM handler does not exit (as `grid run`'s does not:
# harness.grid.stopping): each worker waits a second before its own start-up, as a slow fork would.
_STOPPED_AS_IT_STARTS = """
import signal, time
from harness.data import shards
start = shards._start_worker
shards._start_worker = lambda *args: (time.sleep(1.0), start(*args))
signal.signal(signal.SIGTERM, lambda *_: print("a stop reached a worker before its own handler", flush=True))
def items():
    yield 1
    raise KeyError("the input ends in an error")
try:
    list(shards.ordered_map(abs, items(), 2))
except KeyError:
    print("stopped", flush=True)
"""


def test_a_pool_stopped_as_its_workers_start_leaves_none_behind():
    """The pool stops its workers with SIGTERM; one that gets it before its own handler is set ran its parent's, which
    kept it alive, and the parent waited for it for good (a grid once hung so). Workers fork with SIGTERM held back."""
    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_AS_IT_STARTS], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its process group: it and every worker it started
            proc.wait()
    assert (proc.returncode, out) == (0, "stopped\n")
