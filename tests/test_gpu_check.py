"""`make gpu-check` rehearsed on the CPU: the script measures and reports, a failed check fails the command, and the
path imports nothing the device machine lacks (wandb, optuna, submitit, psycopg are shadowed by packages that raise).
The figures are not tested: on a CPU they only show that the code runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSENT_ON_DEVICE = ("wandb", "optuna", "submitit", "psycopg")


def _gpu_check(tmp_path: Path, sections: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    blocked = tmp_path / "absent_on_device"
    for name in ABSENT_ON_DEVICE:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not on the GPU machine; the gpu-check path must not import it')\n")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(blocked), str(REPO)])
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "harness", "gpu-check", "--sections", sections, "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}
    md = (out / "gpu_check.md").read_text() if (out / "gpu_check.md").is_file() else ""
    return p, report, md


def test_rehearsal_measures_and_reports(tmp_path):
    p, report, md = _gpu_check(tmp_path, "environment,peak,numerics,throughput,ddp,compile")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "REHEARSAL" in p.stdout and "REHEARSAL" in md
    assert report["rehearsal"] is True
    assert report["checks"] == {"numerics.fp32_matches_hf": True, "numerics.bf16_curve_within_tolerance": True}
    s = report["sections"]
    assert s["environment"]["versions"]["torch"] and s["environment"]["device"] == "cpu"
    assert s["numerics"]["fp32_vs_hf_max_abs_logit_diff"] <= 1e-4
    first, last = s["numerics"]["fp32_loss_first_last"]
    assert last < first  # the curve task is learnable: the comparison is between two moving curves
    t = s["throughput"]
    assert t["ours_tokens_per_s"] > 0 and t["hf_tokens_per_s"] > 0 and t["hf_attn_implementation"] == "sdpa"
    assert s["ddp"]["skipped"].startswith("no GPU")
    assert all(v.startswith("skipped: no compile") for v in s["compile"].values())


def test_a_failed_check_fails_the_command(tmp_path, monkeypatch):
    from harness import gpucheck

    monkeypatch.setattr(gpucheck, "FP32_LOGIT_TOL", -1.0)  # a bar no difference meets (on CPU they may agree exactly)
    assert gpucheck.run(tmp_path, ("environment", "numerics"), budget_s=60) is False
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"]["numerics.fp32_matches_hf"] is False
    assert "FAILED: numerics.fp32_matches_hf" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_rehearsal_runs_the_smoke_grid_and_its_table(tmp_path):
    p, report, md = _gpu_check(tmp_path, "environment,real_path")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = report["sections"]["real_path"]
    assert report["checks"] == {"real_path.grid_and_table": True, "real_path.no_wandb": True}
    assert len(r["cells"]) == 8 and {c["accelerator"] for c in r["cells"]} == {"cpu"}
    table = (tmp_path / "out" / "table2_smoke.md").read_text()
    assert "segment_pair_nsp" in table and "doc_sentences" in table
