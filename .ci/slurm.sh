# Sourced by .ci/run: starts a real one-node SLURM cluster on this machine for the SLURM tests
# (tests that submit sweeps with hydra/launcher=slurm) and exports EXPERIMENTS_TEST_SLURM=1 and
# SLURM_CONF. Installs Debian's slurm-wlm, munge, slurmdbd and mariadb-server when they are missing
# (as root). slurmdbd + MariaDB give `sacct`, which submitit polls for job states: without it a
# job that ends without a result file (cancelled, killed, preempted) reads UNKNOWN forever and
# job.result() never returns.
#
# No systemd: munged, mariadbd, slurmdbd, slurmctld and slurmd run as background daemons whose
# files (config, state, logs, pid files, database) live in $EXPERIMENTS_SLURM_DIR
# (default /tmp/experiments-slurm). Sourcing again (same shell, or after a run that left its
# daemons or files behind) first stops the daemons named by the pid files there and wipes the
# folder: every start is a fresh cluster, job ids from 1. `slurm_stop` (for `trap slurm_stop EXIT`)
# ends the cluster's jobs and daemons by pid. Needs root (apt-get, munge and mysql users).
#   source .ci/slurm.sh && trap slurm_stop EXIT
#
# The cluster: node $(hostname -s) with the machine's memory and at least 16 CPUs (more than a small
# CI machine has cores: the tests' jobs mostly wait on each other, and a job asking for 2 CPUs must
# not wait for all the others to end); partitions `debug` (default) and `urgent`, whose jobs preempt
# `debug` jobs (requeued, SIGTERM/--signal first, 10 s grace); short kill waits and timeouts; a
# requeued job may start again after 11 s (AuthInfo=cred_expire=10; SLURM's default holds it back
# 120 s).
slurm_dir="${EXPERIMENTS_SLURM_DIR:-/tmp/experiments-slurm}"

# Ends the cluster of the last start: slurmctld and slurmd first (no job starts after that), then
# the jobs still running (SIGKILL to each slurmstepd working in $slurm_dir, and to everything under
# it), then slurmdbd, mariadbd and munged. Daemons are found by the pid files that start wrote (a
# pid now running another program is left alone): SIGTERM, and SIGKILL to any still there after
# 15 s. The files stay.
slurm_stop() {
  _slurm_end slurmd slurmctld
  local p steps=""
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null || true)" = slurmstepd ] || continue
    case "$(readlink "$p/cwd" 2>/dev/null || true)" in "$slurm_dir"/*) steps="$steps ${p#/proc/}" ;; esac
  done
  if [ -n "$steps" ]; then
    # shellcheck disable=SC2046
    kill -9 $(ps -e -o pid=,ppid= | awk -v roots="$steps" '
      { parent[$1] = $2 }
      END { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1
            do { added = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 } } while (added)
            for (p in keep) printf "%s ", p }') 2>/dev/null || true
  fi
  _slurm_end slurmdbd mariadbd munged
}

_slurm_end() {
  local name pid pids="" n alive
  for name in "$@"; do
    pid=$(cat "$slurm_dir/run/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ]; then
      kill "$pid" 2>/dev/null || true
      pids="$pids $pid"
    fi
    rm -f "$slurm_dir/run/$name.pid"
  done
  for n in $(seq 150); do  # 15 s
    alive=""
    for pid in $pids; do  # a zombie (not reaped yet by its parent) has ended
      if [ -d "/proc/$pid" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null; then alive=$pid; break; fi
    done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
  for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
}

slurm_start() {
  local t0=$SECONDS
  if [ "$(id -u)" != 0 ]; then
    echo "slurm.sh: starting the test cluster needs root" >&2
    return 1
  fi
  local pkgs=""
  command -v slurmctld >/dev/null || pkgs="$pkgs slurm-wlm"
  command -v munged >/dev/null || pkgs="$pkgs munge"
  command -v slurmdbd >/dev/null || pkgs="$pkgs slurmdbd"
  command -v mariadbd >/dev/null || pkgs="$pkgs mariadb-server"
  if [ -n "$pkgs" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
  slurm_stop
  rm -rf "$slurm_dir"
  mkdir -p "$slurm_dir"/{run,log,ctld,slurmd,munge}
  chmod 755 "$slurm_dir"

  # munge on its default socket (every SLURM program and daemon looks there), with the package's
  # key (made at install) or a new one; a munged already answering there (not ours) is used as is.
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
  fi
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    chown munge:munge "$slurm_dir/munge" && chmod 700 "$slurm_dir/munge"
    runuser -u munge -- munged --pid-file="$slurm_dir/munge/munged.pid" \
      --log-file="$slurm_dir/munge/munged.log" --seed-file="$slurm_dir/munge/munged.seed"
    ln -sf "$slurm_dir/munge/munged.pid" "$slurm_dir/run/munged.pid"  # files of its own: it runs as munge
  fi

  # Free ports for slurmctld, slurmd, slurmdbd and MariaDB (the config carries them).
  local ports
  ports=$(python3 -c 'import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
  local ctld_port dbd_port db_port slurmd_port
  read -r ctld_port slurmd_port dbd_port db_port <<<"$ports"

  # MariaDB on 127.0.0.1 for slurmdbd only.
  local db="$slurm_dir/mysql"
  mkdir -p "$db" && chown mysql:mysql "$db"
  mariadb-install-db --no-defaults --datadir="$db/data" --user=mysql --auth-root-authentication-method=socket \
    --skip-test-db >"$slurm_dir/log/mariadb-install.log" 2>&1
  setsid -f mariadbd --no-defaults --datadir="$db/data" --user=mysql --bind-address=127.0.0.1 --port="$db_port" \
    --socket="$db/mysqld.sock" --pid-file="$db/mariadbd.pid" --skip-name-resolve \
    --log-error="$db/mariadb.log" --innodb-buffer-pool-size=32M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1
  ln -sf "$db/mariadbd.pid" "$slurm_dir/run/mariadbd.pid"  # files of its own: it runs as mysql
  local n
  for n in $(seq 300); do  # 30 s
    [ -S "$db/mysqld.sock" ] && mariadb --no-defaults --socket="$db/mysqld.sock" -u root -e 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  mariadb --no-defaults --socket="$db/mysqld.sock" -u root -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

  local host
  host=$(hostname -s)
  cat >"$slurm_dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$slurm_dir/run/slurmdbd.pid
LogFile=$slurm_dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$slurm_dir/slurmdbd.conf"

  # Memory as slurmd finds it (slurmd -C), 0.5 GiB of it kept for the system; CPUs: the cores, at
  # least 16 (SlurmdParameters=config_overrides lets slurmd take the config's word for them).
  local cpus mem
  cpus=$(nproc)
  [ "$cpus" -ge 16 ] || cpus=16
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$((mem - 512))
  cat >"$slurm_dir/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=$slurm_dir/ctld
SlurmdSpoolDir=$slurm_dir/slurmd
SlurmctldPidFile=$slurm_dir/run/slurmctld.pid
SlurmdPidFile=$slurm_dir/run/slurmd.pid
SlurmctldLogFile=$slurm_dir/log/slurmctld.log
SlurmdLogFile=$slurm_dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Pending jobs are tried every second (defaults 60 s and 30 s): a requeued job, eligible again
# cred_expire + 1 s after its requeue, starts within a second of that.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs without --mem get an equal share of the node per CPU, not all of it.
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
JobRequeue=1
# Seconds between SIGTERM and SIGKILL at a time limit or scancel; time limits enforced exactly.
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
# Preemption by partition priority: an urgent job requeues the debug jobs in its way; they get
# their --signal (submitit's USR2) or SIGTERM, then SIGKILL after GraceTime.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
  export SLURM_CONF="$slurm_dir/slurm.conf"
  # Plain `sinfo` elsewhere on the machine finds this cluster too (unless /etc/slurm has its own).
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm && ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    ln -sfn "$slurm_dir/slurmdbd.conf" /etc/slurm/slurmdbd.conf
  fi

  slurmdbd  # reads slurmdbd.conf next to $SLURM_CONF
  for n in $(seq 300); do  # 30 s
    grep -q 'slurmdbd version .* started' "$slurm_dir/log/slurmdbd.log" 2>/dev/null && break
    sleep 0.1
  done
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  local state="" deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null | sort -u || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  if [ "$state" != idle ]; then
    echo "SLURM did not come up (node state: '${state}'); logs in $slurm_dir/log" >&2
    tail -n 20 "$slurm_dir"/log/*.log >&2 || true
    return 1
  fi
  export EXPERIMENTS_TEST_SLURM=1
  echo "SLURM cluster for the tests: SLURM_CONF=$SLURM_CONF, node $host idle ($cpus CPUs, ${mem} MB), up in $((SECONDS - t0)) s"
}

slurm_start
