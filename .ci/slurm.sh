#!/usr/bin/env bash
# Start (or reuse) a throwaway one-node SLURM cluster on this machine for the `slurm` tests; print what they need
# (the last line: SLURM_CONF=..., for every SLURM command and job). `.ci/slurm.sh stop` stops the daemons it started,
# by the PIDs it recorded. Used by .ci/run and, when SLURM is installed but no cluster runs, by the test fixture.
# Everything lives in $DIR (config, state, logs, munge socket); /etc/slurm is not touched.
set -euo pipefail
DIR=${SLURMTEST_DIR:-/tmp/harness-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

stop() {  # by recorded PID only, never by name
  for name in slurmd slurmctld munged; do
    if [ -f "$DIR/$name.pid" ]; then
      pid=$(cat "$DIR/$name.pid")
      if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      fi
      rm -f "$DIR/$name.pid"
    fi
  done
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }
node_up() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if running munged && running slurmctld && running slurmd && node_up; then
  echo "SLURM_CONF=$CONF"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "no SLURM or munge (apt-get install slurm-wlm munge, as root)" >&2; exit 3; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ "$(id -u)" = 0 ] || { echo "starting the SLURM daemons needs root" >&2; exit 3; }
stop  # whatever is left of an earlier cluster in $DIR
rm -rf "$DIR" && mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
chown munge:munge "$DIR/munge" && chmod 0755 "$DIR/munge"
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge: /etc/munge/munge.key; }

# setpriv execs, so $! is the daemon itself; -F/-D keep each in the foreground, setsid detaches it from this shell.
setsid setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged -F --socket="$DIR/munge/socket" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
  </dev/null >>"$DIR/munged.out" 2>&1 &
echo $! >"$DIR/munged.pid"
for _ in $(seq 50); do [ -S "$DIR/munge/socket" ] && break; sleep 0.1; done

HOST=$(hostname -s)
NODE=$(slurmd -C | head -1)  # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
cat >"$CONF" <<EOF
# A one-node test cluster written by .ci/slurm.sh: no cgroups (proctrack/linuxproc, task/none), no accounting.
ClusterName=harness
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s), and the backfill
# and main schedulers, one of which starts it then, run every bf_interval (default 30) and sched_interval (default
# 60) seconds: so a requeued task restarts in seconds.
AuthInfo=socket=$DIR/munge/socket,cred_expire=5
SchedulerParameters=bf_interval=1,sched_interval=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.daemon.pid
SlurmdPidFile=$DIR/slurmd.daemon.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
# TERM to KILL when a job is cancelled or requeued (default 30 s)
KillWait=5
# tasks run at the nice value of the sbatch that submitted them (a `nice` test run stays nice)
PropagatePrioProcess=1
$NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

setsid /usr/sbin/slurmctld -D -c -f "$CONF" </dev/null >>"$DIR/slurmctld.out" 2>&1 &
echo $! >"$DIR/slurmctld.pid"
setsid /usr/sbin/slurmd -D -f "$CONF" </dev/null >>"$DIR/slurmd.out" 2>&1 &
echo $! >"$DIR/slurmd.pid"

for _ in $(seq 300); do node_up && break; sleep 0.2; done
if ! node_up; then
  echo "SLURM node not idle after 60 s; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  sinfo -N >&2 || true
  exit 1
fi
sinfo -N -o '%N %P %T %c %m' >&2
echo "SLURM_CONF=$CONF"
