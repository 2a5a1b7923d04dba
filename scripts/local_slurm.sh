#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback (munge + MariaDB + slurmdbd + slurmctld + slurmd), for tests and demos.
#
#   sudo scripts/local_slurm.sh install     # Debian: apt-get install slurm-wlm munge slurmdbd mariadb-server
#   sudo scripts/local_slurm.sh start       # writes $STATE/env: `source` it so sbatch/squeue/sacct find the cluster
#   scripts/local_slurm.sh status
#   sudo scripts/local_slurm.sh stop        # stops exactly the processes start launched (by their PIDs)
#
# Accounting (slurmdbd) is not optional: without it submitit waits forever for a job that died without a result;
# with it, it raises UncompletedJobError. Everything lives in $STATE (default /tmp/transferlab-slurm); nothing is
# written under /etc. Runs as root (SlurmUser=root) on a throwaway machine or container, never on a real cluster.
set -euo pipefail

STATE=${TRANSFERLAB_SLURM_STATE:-/tmp/transferlab-slurm}
CPUS=${TRANSFERLAB_SLURM_CPUS:-$(nproc)}
MEM_MB=${TRANSFERLAB_SLURM_MEM_MB:-8000}
PIDS="$STATE/pids"        # "name pid" per line, written as each daemon starts
export SLURM_CONF="$STATE/etc/slurm.conf"

log() { echo "local_slurm: $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  while ((SECONDS < end)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $what"; return 1
}

record() { echo "$1 $2" >>"$PIDS"; }

# A recorded PID is ours only while it is alive *and* still runs the program we started: a pids file left by a
# machine snapshot or a reboot names PIDs the system may have given to unrelated processes since.
ours() {  # ours NAME PID
  [[ -r "/proc/$2/comm" ]] && [[ "$(cat "/proc/$2/comm" 2>/dev/null)" == "${1:0:15}" ]]
}

any_ours() {
  [[ -f "$PIDS" ]] || return 1
  while read -r name pid; do ours "$name" "$pid" && return 0; done <"$PIDS"
  return 1
}

install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

write_configs() {
  # A test cluster starts empty: jobs of an earlier instance (stopped while one was still completing) would
  # otherwise be recovered, and slurmd keeps the node busy until their steps time out.
  rm -rf "$STATE"/spool/ctld "$STATE"/spool/d
  mkdir -p "$STATE"/{etc,log,run,spool/ctld,spool/d,munge,mysql/data}
  chown munge:munge "$STATE/munge"
  # munged on its default socket: sacctmgr/sacct (slurmdbd connections) ignore slurm.conf's AuthInfo.
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  cat >"$STATE/etc/slurm.conf" <<EOF
ClusterName=transferlab
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120): short on a test cluster.
AuthInfo=cred_expire=10
# Job ids of a restarted test cluster must not repeat earlier ones still in the accounting database (sacct would
# answer with the old job's state).
FirstJobId=$(( $(date +%s) % 60000000 + 1 ))
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
  cat >"$STATE/env" <<EOF
export SLURM_CONF=$SLURM_CONF
EOF
}

start() {
  if any_ours; then log "already started (see $PIDS); run stop first"; return 1; fi
  if [[ -e "$PIDS" ]]; then log "none of the daemons in $PIDS runs any more (a stale record): starting afresh"; fi
  command -v slurmctld >/dev/null || install
  write_configs
  : >"$PIDS"

  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/seed" </dev/null >>"$STATE/log/munged.out" 2>&1 &
  record munged $!
  wait_for 10 munged munge -n || return 1

  local db="$STATE/mysql"   # owned by the mysql user: data, socket, pid and log
  chown -R mysql:mysql "$db"
  if [[ ! -d "$db/data/mysql" ]]; then
    mysql_install_db --user=mysql --datadir="$db/data" --auth-root-authentication-method=socket \
      >"$STATE/log/mysql_install.log" 2>&1 || return 1
  fi
  /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db/data" --socket="$db/mysqld.sock" \
    --pid-file="$db/mysqld.pid" --bind-address=127.0.0.1 --port=3306 --skip-name-resolve \
    --log-error="$db/mariadb.log" </dev/null >>"$STATE/log/mariadb.out" 2>&1 &
  record mariadbd $!
  wait_for 30 mariadb mysqladmin --socket="$db/mysqld.sock" ping || return 1
  mysql --socket="$db/mysqld.sock" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    FLUSH PRIVILEGES;" || return 1

  /usr/sbin/slurmdbd -D </dev/null >>"$STATE/log/slurmdbd.out" 2>&1 &   # finds slurmdbd.conf beside $SLURM_CONF
  record slurmdbd $!
  wait_for 30 slurmdbd sacctmgr -n list cluster || return 1
  sacctmgr -i add cluster transferlab >/dev/null 2>&1 || true

  /usr/sbin/slurmctld -D -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmctld.out" 2>&1 &
  record slurmctld $!
  wait_for 30 slurmctld scontrol ping || return 1

  /usr/sbin/slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmd.out" 2>&1 &
  record slurmd $!
  wait_for 30 "node localhost idle" bash -c "sinfo -h -N -o %t | grep -q idle" || return 1
  log "up: $(sinfo -h -o '%P %D %t %c') — source $STATE/env"
}

stop() {
  [[ -f "$PIDS" ]] || { log "not started"; return 0; }
  # In reverse start order, by recorded PID (checked against its program, see ours): never by process name alone.
  tac "$PIDS" | while read -r name pid; do
    if ours "$name" "$pid"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do ours "$name" "$pid" || break; sleep 0.2; done
      if ours "$name" "$pid"; then log "$name ($pid) still running: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
    fi
  done || true
  rm -f "$PIDS"
  log "stopped"
}

status() {
  [[ -f "$PIDS" ]] || { echo "not started"; return 1; }
  local ok=0
  while read -r name pid; do
    if ours "$name" "$pid"; then echo "$name $pid running"; else echo "$name $pid DEAD"; ok=1; fi
  done <"$PIDS"
  sinfo 2>/dev/null || ok=1
  return $ok
}

case "${1:-}" in
  install) install ;;
  start) start || { log "start failed (logs in $STATE/log); stopping what was started"; stop; exit 1; } ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
