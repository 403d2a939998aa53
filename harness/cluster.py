"""Where submitit executors are made, for the two commands that submit job arrays: `grid run` (its workers) and
`data prepare` (its shards), and for `grid plan`, which shows the array `grid run --backend slurm` would submit.

`--slurm` takes submitit's AutoExecutor parameters (`load_slurm_options`). A parameter submitit does not accept is
bad input wherever the command runs; then, for `--backend slurm`, a machine without SLURM's commands is (`check_slurm`).
Both are refused before any work or record. `slurm_preview` renders the sbatch script with submitit's own functions
on any machine: submitit's SlurmExecutor refuses to exist where `srun` is not on PATH, so the preview uses one that
skips that check and cannot submit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from harness.errors import UserError

# submitit's SlurmExecutor looks for srun (its sbatch script runs each task through it); it submits with sbatch
SLURM_COMMANDS = ("srun", "sbatch")


def load_slurm_options(text: str | None) -> dict:
    """`--slurm 'partition=gpu,gpus_per_node=8,timeout_min=600'` → submitit parameters."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"--slurm: expected key=value items, got {item!r}")
            out[key.strip()] = yaml.safe_load(value)
    return out


def check_slurm(workers: int, slurm: dict) -> None:
    """What `submitit_executor(..., "slurm", ...)` refuses, found without creating anything: an unknown or mistyped
    --slurm parameter (on any machine), then a machine that cannot submit to SLURM."""
    _preview_executor(Path("submitit"), workers, slurm)
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise UserError(f"--backend slurm: {' and '.join(f'`{c}`' for c in missing)} not on PATH, so this machine "
                        f"cannot submit to SLURM; run on a SLURM login node, or use --backend local (processes here) "
                        f"or --backend submitit-local (the same array as local processes)")


def submitit_executor(folder: Path, cluster: str, workers: int, slurm: dict):
    """The executor `grid run` submits its array with and `data prepare` its shards: --slurm's parameters, then on
    SLURM the array's parallelism (at most `workers` tasks at once). cluster: "slurm" or "local" (submitit-local).
    An unknown or mistyped --slurm parameter, or SLURM missing, is a UserError (`check_slurm`). The local executor
    creates its folder, `folder`/submitit; the SLURM one creates it at the first submission."""
    import submitit

    if cluster == "slurm":
        check_slurm(workers, slurm)
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=cluster)
    _update(executor, slurm)
    if cluster != "local":
        executor.update_parameters(slurm_array_parallelism=workers)
    return executor


def slurm_preview(folder: Path, workers: int, slurm: dict) -> tuple[dict, str]:
    """The parameters `grid run --backend slurm` gives submitit (--slurm, then the array's parallelism) and the sbatch
    script submitit would write for an array of `workers` tasks, rendered by submitit itself, on any machine. Creates
    nothing; a --slurm parameter submitit does not accept is a UserError, as for `submitit_executor`."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = _preview_executor(folder / "submitit", workers, slurm)._executor
    script = _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                                 **{**inner.parameters, "map_count": workers})
    return {**slurm, "slurm_array_parallelism": workers}, script


def _update(executor, slurm: dict) -> None:
    try:
        executor.update_parameters(**slurm)
    except (AssertionError, NameError, ValueError, TypeError) as e:  # submitit: an unknown or mistyped parameter
        raise UserError(f"--slurm: {str(e).splitlines()[0]}") from None


def _preview_executor(folder: Path, workers: int, slurm: dict):
    """AutoExecutor(folder, cluster="slurm") with --slurm's parameters and the array's parallelism, as
    `submitit_executor` makes it (the same checks and translation of parameters), on a SlurmExecutor that does not
    look for srun and cannot submit. AutoExecutor cannot be given an executor class, so it is built for submitit's
    debug executor (which checks and creates nothing) and then given the SLURM one."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    class PreviewSlurmExecutor(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2  # SlurmExecutor.__init__ refuses to exist unless this says a cluster (srun) is here

        def _internal_process_submissions(self, delayed_submissions):
            raise RuntimeError("a preview of the SLURM array submits nothing")

    executor = submitit.AutoExecutor(folder=folder, cluster="debug")
    executor.cluster, executor._executor = "slurm", PreviewSlurmExecutor(folder)
    executor.parameters = executor._executor.parameters  # as AutoExecutor.__init__ shares them
    _update(executor, slurm)
    executor.update_parameters(slurm_array_parallelism=workers)
    return executor
