"""harness.cluster on a machine without SLURM (as `make test` runs, and .ci/run hides SLURM for it): `grid plan`'s
preview of the array is the script of the executor `grid run` submits with; `--backend slurm` is one line and exit 2
before anything is recorded; and the data layer does not depend on the grid runner."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cluster import SLURM_COMMANDS, slurm_preview, submitit_executor
from harness.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SLURM = {"slurm_partition": "gpu", "gpus_per_node": 2, "timeout_min": 600, "mem_gb": 64, "cpus_per_task": 8}


def fake_slurm(folder: Path) -> str:
    """A PATH on which SLURM's commands exist (and fail if run), for the executor that looks for srun."""
    folder.mkdir()
    for name in SLURM_COMMANDS:
        (folder / name).write_text("#!/bin/sh\nexit 1\n")
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_the_preview_is_the_script_of_the_executor_grid_run_submits_with(tmp_path, monkeypatch):
    from submitit.slurm.slurm import _make_sbatch_string

    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM
    params, preview = slurm_preview(tmp_path / "study", 4, SLURM)
    assert params == {**SLURM, "slurm_array_parallelism": 4}
    assert not (tmp_path / "study").exists()  # the preview creates nothing
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin"))
    inner = submitit_executor(tmp_path / "study", "slurm", 4, SLURM)._executor
    assert type(inner).__name__ == "SlurmExecutor"  # submitit's own, which found srun
    script = _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                                 **{**inner.parameters, "map_count": 4})
    assert preview == script
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --gpus-per-node=2", "#SBATCH --partition=gpu", "#SBATCH --time=600",
                 "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=8"):
        assert line in preview.splitlines()


def test_grid_plan_shows_the_array_where_srun_is_not_on_path(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))
    code = main(["grid", "plan", "experiments/table4_data.yaml", "--scale", "paper", "--workers", "3",
                 "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0
    assert "H100 SXM GPU-h" in out and "#SBATCH --array=0-2%3" in out and "srun --unbuffered" in out
    assert not (tmp_path / "runs").exists()


def test_a_bad_slurm_parameter_is_refused_before_slurm_is_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="^--slurm: "):
        submitit_executor(tmp_path, "slurm", 1, {"cpus_per_tsk": 4})
    with pytest.raises(UserError, match="^--slurm: "):
        slurm_preview(tmp_path, 1, {"gpus_per_node": "x"})


@pytest.mark.parametrize("command", [
    ["grid", "run", "experiments/table2_nsp.yaml", "--scale", "smoke", "--backend", "slurm", "--workers", "2"],
    ["data", "prepare", "--corpus", "tiny", "--backend", "slurm", "--slurm", "cpus_per_task=4"],
])
def test_backend_slurm_without_slurm_is_one_line_exit_2_and_records_nothing(tmp_path, command):
    empty = tmp_path / "bin"  # PATH: no SLURM, whatever this machine has installed
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "HARNESS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "harness", *command, *(["--runs-dir", str(tmp_path / "runs")]
                        if command[0] == "grid" else [])], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: --backend slurm: `srun` and `sbatch` not on PATH")
    assert "--backend local" in lines[0] and "--backend submitit-local" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # no study folder, no cache


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    """Every module an import statement in the file names, those inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_the_data_layer_never_imports_the_grid():
    """Nothing under harness/data/ imports harness.grid, directly or through another harness module, at the top of a
    file or inside a function (harness.cluster is their common home for submitit executors)."""
    start = [f"harness.data.{p.stem}" for p in sorted((REPO / "harness" / "data").glob("*.py"))]
    seen, stack, reached_from = set(start), list(start), {}
    while stack:
        name = stack.pop()
        path = _module_file(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imported in _imports(path, package):
            if imported.split(".")[0] == "harness" and imported not in seen and _module_file(imported):
                seen.add(imported)
                reached_from[imported] = name
                stack.append(imported)
    grid = sorted(m for m in seen if m == "harness.grid" or m.startswith("harness.grid."))
    assert not grid, [f"{m} <- {reached_from[m]}" for m in grid]
    code = ("import sys, pkgutil, importlib, harness.data; [importlib.import_module(f'harness.data.{m.name}') for m in "
            "pkgutil.iter_modules(harness.data.__path__)]; print(sorted(m for m in sys.modules if "
            "m.startswith('harness.grid')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
