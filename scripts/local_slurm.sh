#!/usr/bin/env bash
# A single-node SLURM cluster on this machine: for trying `hydra/launcher=slurm` on a workstation
# and for the tests marked `slurm` (tests/test_slurm.py). Debian or Ubuntu, as root.
#
#   scripts/local_slurm.sh start    # install slurm-wlm and munge when missing, then start munged,
#                                   # slurmctld and slurmd; returns once the node takes jobs
#   scripts/local_slurm.sh status   # exit 0 when the cluster answers, and what sinfo says
#   scripts/local_slurm.sh stop     # cancel the cluster's jobs, stop the daemons this script started
#
# Every command is idempotent: `start` on a running cluster checks it and returns, `stop` on a
# stopped one does nothing. The cluster: munged with the key in /etc/munge (generated when
# missing), slurmctld and slurmd as root, one node with the CPUs and memory `slurmd -C` finds, one
# partition `local` (the default, no time limit). Its config is /etc/slurm/slurm.conf, where
# sbatch, sinfo and scontrol look by default; a slurm.conf this script did not write is never
# overwritten. State, logs and pid files live in $NTKLAB_SLURM_DIR (default /var/lib/ntklab-slurm).
set -euo pipefail

DIR="${NTKLAB_SLURM_DIR:-/var/lib/ntklab-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by ntklab scripts/local_slurm.sh"
CLUSTER=ntklab-local
PARTITION=local
# How long a requeued job waits before it may start again (SLURM's default is 120 s, which would
# make every preemption test wait two minutes); it is also the job-step credential's lifetime,
# which only has to cover a step's launch on this one node.
CRED_EXPIRE_S=10

say() { echo "local_slurm: $*"; }
fail() { echo "local_slurm: $*" >&2; exit 1; }

# ----------------------------------------------------------------------------- processes

running() {     # running PIDFILE: the pid in PIDFILE is alive
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() {    # stop_pid PIDFILE NAME: SIGTERM the process in PIDFILE and wait up to 10 s for it
    local pidfile=$1 name=$2 pid
    running "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) did not stop within 10 s; killing it"
        kill -9 "$pid" || true
    fi
    rm -f "$pidfile"
    say "stopped $name (pid $pid)"
}

wait_for() {    # wait_for SECONDS COMMAND...: poll COMMAND every 0.5 s until it succeeds
    local seconds=$1; shift
    for _ in $(seq $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}

# ----------------------------------------------------------------------------- start

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get to install them"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge failed"
}

munge_answers() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_answers; then return 0; fi       # a system munged already runs: use it, never stop it
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "generating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
    # as its own user, like Debian's service: munged refuses keys and directories others can write
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
    wait_for 10 munge_answers || fail "munged started but does not answer (see /var/log/munge/munged.log)"
    # its own pid file is in /run/munge; the copy in $DIR says that `stop` may stop it
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
    say "started munged (pid $(cat "$DIR/run/munged.pid"))"
}

write_config() {
    local node memory cpus
    # the node as slurmd sees this machine: NodeName=... CPUs=... RealMemory=... (without UpTime)
    node=$(slurmd -C | sed -n 1p) || fail "slurmd -C could not describe this machine"
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n "$memory" && -n "$cpus" ]] || fail "could not read CPUs and RealMemory from 'slurmd -C': $node"
    if [[ -e "$CONF" ]] && ! grep -qxF "$MARK" "$CONF"; then
        fail "$CONF exists and was not written by this script; move it away to use the local cluster"
    fi
    mkdir -p /etc/slurm
    cat >"$CONF.new" <<EOF
$MARK
# A single-node cluster for trying ntklab's SLURM launcher and for its tests; 'scripts/local_slurm.sh stop' stops it.
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE_S
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# CPUs (not whole cores) and memory are what jobs take; a job that asks no memory gets its CPUs' share
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory / cpus))
# the schedulers look at pending jobs every second (60 s and 30 s by default), so a requeued job
# starts a few seconds after its hold ends
SchedulerParameters=sched_interval=1,bf_interval=1
# SIGTERM to SIGKILL when a job ends, times out or is requeued
KillWait=2
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -e "$CONF" ]] && cmp -s "$CONF" "$CONF.new"; then
        rm "$CONF.new"
    else
        mv "$CONF.new" "$CONF"
        say "wrote $CONF ($cpus CPUs, $memory MB)"
        # daemons running an older config restart with this one
        stop_pid "$DIR/run/slurmd.pid" slurmd
        stop_pid "$DIR/run/slurmctld.pid" slurmctld
    fi
}

node_takes_jobs() { sinfo --noheader --partition="$PARTITION" --format=%T | grep -qE '^(idle|mixed|allocated)'; }

need_root() { [[ $(id -u) -eq 0 ]] || fail "must run as root (it $1)"; }

start() {
    need_root "installs packages and starts daemons"
    install_packages
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    start_munge
    write_config
    if ! running "$DIR/run/slurmctld.pid"; then
        # -c: start from an empty queue (jobs of an earlier session are not resumed)
        slurmctld -c || fail "slurmctld did not start (see $DIR/log/slurmctld.log)"
        wait_for 20 scontrol ping || fail "slurmctld does not answer (see $DIR/log/slurmctld.log)"
        say "started slurmctld (pid $(cat "$DIR/run/slurmctld.pid"))"
    fi
    if ! running "$DIR/run/slurmd.pid"; then
        slurmd || fail "slurmd did not start (see $DIR/log/slurmd.log)"
        wait_for 10 test -s "$DIR/run/slurmd.pid" || fail "slurmd wrote no pid file (see $DIR/log/slurmd.log)"
        say "started slurmd (pid $(cat "$DIR/run/slurmd.pid"))"
    fi
    if ! wait_for 30 node_takes_jobs; then
        # a node left down or drained by an earlier session: it is this machine, so it can resume
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        wait_for 15 node_takes_jobs \
            || fail "the node does not take jobs: $(sinfo --noheader --Node --format='%N %T %E' 2>&1)"
    fi
    status
}

# ----------------------------------------------------------------------------- status, stop

status() {
    if ! command -v sinfo >/dev/null; then say "not installed (scripts/local_slurm.sh start installs it)"; return 1; fi
    if ! scontrol ping >/dev/null 2>&1; then say "no slurmctld answers"; return 1; fi
    sinfo --format="%P %a %l %D %c %m %T %N"
    node_takes_jobs
}

no_job_running() { ! squeue --noheader --states=RUNNING,COMPLETING,CONFIGURING | grep -q .; }

stop() {
    need_root "stops the daemons it started"
    if scontrol ping >/dev/null 2>&1 && [[ -e "$CONF" ]] && grep -qxF "$MARK" "$CONF"; then
        # every job of this cluster is one of ours: cancel them so no task outlives its daemons
        scancel --full --partition="$PARTITION" 2>/dev/null || true
        wait_for 15 no_job_running || say "jobs still running after 15 s: $(squeue --noheader --format=%i 2>&1)"
    fi
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    stop_pid "$DIR/run/munged.pid" munged       # only when this script started it
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
