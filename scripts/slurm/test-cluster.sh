#!/bin/bash
# A private one-machine SLURM cluster (munge, slurmctld, slurmd from Debian's slurm-wlm)
# for running the recipes for real.  Everything lives in DIR; nothing system-wide changes.
#
#   scripts/slurm/test-cluster.sh start DIR     # prints the exports that point sbatch/squeue at it
#   scripts/slurm/test-cluster.sh stop DIR
#
# The one node has 4 CPUs (oversubscribed on a 2-core machine), so a job with
# --ntasks=3 runs three tasks that stand in for three nodes.
set -euo pipefail
cmd=${1:?start|stop} dir=$(realpath -m "${2:?DIR}")
conf=$dir/slurm.conf

stop() {
    for pidf in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
        [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
    done
    sleep 1
    for pidf in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
        [ -f "$pidf" ] && kill -9 "$(cat "$pidf")" 2>/dev/null || true
        rm -f "$pidf"
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [ "$cmd" = stop ]; then stop; exit 0; fi
for exe in munged slurmctld slurmd sbatch; do
    command -v "$exe" >/dev/null || { echo "$exe not found: apt-get install slurm-wlm munge" >&2; exit 3; }
done
mkdir -p "$dir"/{state,spool,munge}
chmod 700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
host=$(hostname -s)
user=$(id -un)
cat > "$conf" <<CONF
ClusterName=desitest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=15
MinJobAge=600
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=4 RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
export SLURM_CONF=$conf
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 0.5
done
echo "the test cluster did not come up; see $dir/*.log" >&2
tail -20 "$dir"/slurmctld.log "$dir"/slurmd.log >&2 || true
stop
exit 1
