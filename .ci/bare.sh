#!/usr/bin/env bash
# `.ci/bare.sh CMD...`: run CMD as on a machine without SLURM or PostgreSQL, whatever this one has installed. In a
# private mount namespace (unshare -m, as root) an empty file that nobody may execute is bind-mounted over every SLURM,
# munge and PostgreSQL command found (on PATH or in the usual system folders, symlinks followed) and over every file
# in /usr/lib/postgresql/*/bin: `which` finds none of them and running one fails with "Permission denied". Nothing
# else changes (the venv, python, the network), and nothing outside the namespace sees the mounts. Before it runs
# CMD it checks that none of those commands is left executable, and stops if one is. Used by .ci/run for `make test`.
set -euo pipefail
COMMANDS=(srun sbatch squeue scontrol scancel sinfo sacct salloc sattach sstat sprio sshare sreport sacctmgr
  slurmctld slurmd slurmdbd slurmstepd munge munged mungekey
  postgres postmaster pg_ctl initdb pg_ctlcluster pg_createcluster pg_isready psql createdb)
SEARCH=$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

found() {  # every executable file the commands name, as real paths
  for name in "${COMMANDS[@]}"; do
    PATH=$SEARCH type -aP "$name" || true
  done | xargs -r readlink -f
  for f in /usr/lib/postgresql/*/bin/*; do
    if [ -f "$f" ] && [ -x "$f" ]; then readlink -f "$f"; fi
  done
}

if [ "${1:-}" != --in-namespace ]; then
  [ $# -gt 0 ] || { echo "usage: $0 CMD..." >&2; exit 2; }
  [ "$(id -u)" = 0 ] || { echo "$0: hiding SLURM and PostgreSQL takes a mount namespace: run as root" >&2; exit 3; }
  exec unshare --mount --propagation private -- "$0" --in-namespace "$@"
fi
shift

mapfile -t hide < <(found | sort -u)
if [ ${#hide[@]} -gt 0 ]; then
  empty=$(mktemp /tmp/bare-empty.XXXXXX)
  chmod 0444 "$empty"  # readable, executable by no one (root included: it has no execute bit at all)
  for path in "${hide[@]}"; do mount --bind "$empty" "$path"; done
  rm -f "$empty"  # the mounts keep the file; nothing is left in /tmp
fi
mapfile -t left < <(found | sort -u)
if [ ${#left[@]} -gt 0 ]; then
  echo "$0: still executable after hiding: ${left[*]}" >&2
  exit 1
fi
echo "bare: ${#hide[@]} SLURM/munge/PostgreSQL file(s) hidden in this mount namespace${hide[*]:+: ${hide[*]}}" >&2
exec "$@"
