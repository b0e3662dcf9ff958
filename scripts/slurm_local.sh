#!/usr/bin/env bash
# Single-node SLURM on localhost for tests, CI and debugging: munged + slurmctld + slurmd, loopback only.
#
#   scripts/slurm_local.sh start    # install (apt, root) if missing, write config, start the daemons, wait for idle node
#   scripts/slurm_local.sh status   # exit 0 when all three daemons run and the node answers
#   scripts/slurm_local.sh stop     # stop the daemons by the PIDs written at start
#   scripts/slurm_local.sh env      # print `export SLURM_CONF=...` for sbatch/squeue/submitit clients
#
# Everything lives under $SLURM_LOCAL_DIR (default ${TMPDIR:-/tmp}/avdet-slurm-<uid>, refused unless it is our own
# real directory): slurm.conf, munge key/socket, spool, logs, and pids/{munged,slurmctld,slurmd}.pid. Clients find the
# cluster through SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf (the script never touches /etc/slurm). Daemons bind to
# 127.0.0.1 only (CommunicationParameters=NoInAddrAny, NoCtldInAddrAny with NodeAddr=127.0.0.1). No systemd: munged
# runs as user munge via setpriv, slurmctld -D and slurmd -D in the background as root. Settings follow
# shared/docs/ENVIRONMENT.md.
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/avdet-slurm-$(id -u)}"
CTLD_PORT="${SLURM_LOCAL_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_LOCAL_SLURMD_PORT:-6818}"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
CONF="$DIR/etc/slurm.conf"
PKGS=(slurmctld slurmd slurm-client munge)

log() { echo "slurm_local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

own_state_dir() {  # create $DIR (mode 0700) or accept it only as our own real directory: a name in /tmp can be
                   # created first by anyone, who would then hold our munge key and slurm.conf
    mkdir -p "$(dirname "$DIR")"
    mkdir -m 700 "$DIR" 2>/dev/null || true
    [ -L "$DIR" ] && die "state dir $DIR is a symlink; remove it (or set SLURM_LOCAL_DIR) and run again"
    [ -d "$DIR" ] || die "state dir $DIR exists but is not a directory; remove it (or set SLURM_LOCAL_DIR)"
    local owner
    owner="$(stat -c %u "$DIR")"
    [ "$owner" = "$(id -u)" ] || die "state dir $DIR is owned by uid $owner, not by this user ($(id -u)): someone" \
        "else created it; remove it (or set SLURM_LOCAL_DIR to a directory of your own) and run again"
}

install_if_missing() {
    local missing=0
    for bin in slurmctld slurmd sbatch munged mungekey; do
        command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$bin" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" = 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        die "SLURM/munge are not installed and this is not root: run 'sudo apt-get install -y ${PKGS[*]}' first"
    fi
    log "installing ${PKGS[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
}

alive() { [ -f "$DIR/pids/$1.pid" ] && kill -0 "$(cat "$DIR/pids/$1.pid")" 2>/dev/null; }

write_munge_key() {
    mkdir -p "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown -R munge:munge "$DIR/munge"
    chmod 700 "$DIR/munge"
    chmod 400 "$DIR/munge/munge.key"
}

write_slurm_conf() {
    local hw cpus mem
    hw="$(slurmd -C | head -n1)"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    mem=$(( mem * 9 / 10 ))
    mkdir -p "$DIR/etc" "$DIR/spool/ctld" "$DIR/spool/d" "$DIR/log" "$DIR/pids"
    cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh — single node on localhost, loopback only
ClusterName=avdet-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/pids/slurmctld.os.pid
SlurmdPidFile=$DIR/pids/slurmd.os.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_bg() {  # start_bg NAME CMD...: run CMD in the background, record its PID
    local name="$1"; shift
    "$@" >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/pids/$name.pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local secs="$1" what="$2"; shift 2
    for _ in $(seq 1 $(( secs * 5 ))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what not ready after ${secs}s; see $DIR/log/"
}

node_idle() { SLURM_CONF="$CONF" sinfo -h -N -o '%t' | grep -Eq '^(idle|mix|alloc)'; }

cmd_start() {
    own_state_dir
    install_if_missing
    export PATH="$PATH:/usr/sbin"
    if alive slurmctld || alive slurmd || alive munged; then
        log "already running under $DIR (run '$0 stop' first)"; cmd_status; return 0
    fi
    mkdir -p "$DIR/log" "$DIR/pids"
    chmod 755 "$DIR"   # munged (user munge) must reach $DIR/munge; own_state_dir made it 0700 and ours
    write_munge_key
    write_slurm_conf
    export SLURM_CONF="$CONF"
    start_bg munged setpriv --reuid=munge --regid=munge --init-groups \
        munged -F --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 10 munged munge -n -S "$DIR/munge/munge.socket"
    start_bg slurmctld slurmctld -D -f "$CONF"
    start_bg slurmd slurmd -D -f "$CONF" -N localhost
    wait_for 30 "node localhost" node_idle
    log "up: SLURM_CONF=$CONF (partition $PARTITION, node localhost)"
}

stop_one() {  # stop_one NAME: SIGTERM the recorded PID, SIGKILL after 10 s
    local f="$DIR/pids/$1.pid" pid
    [ -f "$f" ] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { log "$1 ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$f"
}

cmd_stop() {
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
    log "stopped (state kept in $DIR)"
}

cmd_status() {
    local rc=0 name
    for name in munged slurmctld slurmd; do
        if alive "$name"; then log "$name running (pid $(cat "$DIR/pids/$name.pid"))"; else log "$name not running"; rc=1; fi
    done
    [ "$rc" = 0 ] && SLURM_CONF="$CONF" sinfo -N 2>&1 | sed 's/^/slurm_local: /' >&2
    return "$rc"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env   (state dir: \$SLURM_LOCAL_DIR, default \${TMPDIR:-/tmp}/avdet-slurm-<uid>)" >&2; exit 2 ;;
esac
