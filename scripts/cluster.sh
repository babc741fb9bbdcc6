#!/usr/bin/env bash
# A real SLURM cluster on this machine, reached over SSH, for trying campaigns and for tests (docs/cluster.md).
#
#   scripts/cluster.sh [--services-only] [PROFILE]        (as root; from an account with sudo: sudo scripts/cluster.sh)
#
# As root (it calls no sudo itself: it switches users with runuser), idempotent, Debian packages only, no systemd
# (daemons are started directly):
#   1. munge, slurmctld, slurmd: one node (this machine), partitions `cpu` (default) and `gpu`; the node offers a
#      `gpu` GRES whose slots are stand-in device files (/dev/null, ...), so `sbatch --gres=gpu:1` is accepted and
#      scheduled (nothing on the node is a GPU; jobs set device cpu). Finished jobs are logged for `sacct --completion`.
#   2. an unprivileged user (ALML_CLUSTER_USER, default alml) that the jobs run as, allowed to read and execute
#      this repository's .venv, its aiida_alml source and the Python the venv links to, nothing else; AiiDA config
#      folders (.aiida here, in AIIDA_PATH, in the home) are closed to it.
#   3. an SSH server on 127.0.0.1:ALML_SSH_PORT (default 2222, key login for that user only) and, for the user running
#      this script (the one running the AiiDA daemon), a key, a known_hosts entry and a `Host alml-cluster` alias.
#   4. unless --services-only: AiiDA computers slurm-cpu and slurm-gpu and the codes alml-label, alml-md, mace-train on
#      both, in PROFILE (default: verdi's default profile), by scripts/cluster_aiida.py.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CLUSTER_USER=${ALML_CLUSTER_USER:-alml}
SSH_PORT=${ALML_SSH_PORT:-2222}
GPU_SLOTS=${ALML_GPU_SLOTS:-2}          # how many `gpu` GRES units the node advertises (jobs that may hold one at once)
SSH_ALIAS=alml-cluster
SERVICES_ONLY=0
PROFILE=
for arg in "$@"; do
    case "$arg" in
        --services-only) SERVICES_ONLY=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "unknown option $arg (use --services-only and/or a profile name)" >&2; exit 2 ;;
        *) PROFILE=$arg ;;
    esac
done

say() { echo "==> $*"; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && how="sudo $0 $*" || how="$0 $* as root (there is no sudo here: log in as root)"
    die "run as root: $how. It installs packages and starts munge, slurmctld, slurmd and sshd. Without root there is no
local cluster: run campaigns on the localhost computer (aiida-alml setup), or on a real cluster (docs/cluster.md, Part 2)"
fi
[ -x .venv/bin/python ] || die "no .venv in $REPO: run scripts/bootstrap.sh first"

# ---------------------------------------------------------------------------------------------------- packages
need=()
for pair in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client sshd:openssh-server; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------------------------- munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    install -d -o munge -g munge -m 0700 /etc/munge
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------------------------------------------- SLURM
HOST=$(hostname -s)
# The node line as slurmd sees the hardware (CPUs, sockets, cores, memory): a node claiming more is drained.
NODE=$(slurmd -C | head -1)
[[ "$NODE" == NodeName=* ]] || die "slurmd -C did not describe this node: $NODE"
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
install -d -m 0755 /var/spool/slurmd /etc/slurm
touch /var/log/slurm/jobcomp.log
chown slurm:slurm /var/log/slurm/jobcomp.log && chmod 0644 /var/log/slurm/jobcomp.log
conf=$(mktemp) gres=$(mktemp)
cat > "$conf" <<EOF
# Written by aiida-alml scripts/cluster.sh: one node, two partitions, a gpu GRES of stand-in devices.
ClusterName=alml
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups and no systemd in containers: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
GresTypes=gpu
ReturnToService=2
# No slurmdbd: finished jobs go to a text log that \`sacct --completion\` reads.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
$NODE Gres=gpu:$GPU_SLOTS State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
# slurmd drops a gpu GRES that has no File ("Removing file-less GPU gpu:(null) from final GRES list") and slurmctld then
# marks the node INVAL ("gres/gpu count reported lower than configured"). So each slot names a harmless character
# device; with task/none nothing is bound or confined, SLURM only counts the slots and sets CUDA_VISIBLE_DEVICES.
devices=(/dev/null /dev/zero /dev/full /dev/urandom)
[[ "$GPU_SLOTS" =~ ^[1-4]$ ]] || die "ALML_GPU_SLOTS must be 1 to 4 (one stand-in device each), not '$GPU_SLOTS'"
files=$(IFS=,; echo "${devices[*]:0:$GPU_SLOTS}")
cat > "$gres" <<EOF
# Stand-in GPUs: schedulable gpu slots, no GPU behind them (jobs run with device cpu).
NodeName=$HOST Name=gpu File=$files
EOF
changed=0
cmp -s "$conf" /etc/slurm/slurm.conf || { install -m 0644 "$conf" /etc/slurm/slurm.conf; changed=1; }
cmp -s "$gres" /etc/slurm/gres.conf || { install -m 0644 "$gres" /etc/slurm/gres.conf; changed=1; }
rm -f "$conf" "$gres"

running() {  # running PIDFILE: the daemon whose pid the file holds is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
stop() {  # stop PIDFILE: end that one daemon (by its pid, never by name) and wait for it
    running "$1" || return 0
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    die "process $pid (from $1) did not stop"
}
if [ "$changed" = 1 ]; then
    say "slurm.conf/gres.conf written; (re)starting slurmctld and slurmd"
    stop /run/slurmd.pid; stop /run/slurmctld.pid
fi
running /run/slurmctld.pid || { say "starting slurmctld"; slurmctld; }
running /run/slurmd.pid || { say "starting slurmd"; slurmd; }
state=
for _ in $(seq 60); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated) ;;
    *) die "node $HOST is '$state' (see /var/log/slurm/slurmd.log and slurmctld.log)" ;;
esac
say "SLURM up: $(sinfo -h -o '%P %a %D %G' | tr '\n' ';')"

# ---------------------------------------------------------------------------------------------------- the job user
if ! id "$CLUSTER_USER" >/dev/null 2>&1; then
    say "creating user $CLUSTER_USER"
    useradd --create-home --shell /bin/bash "$CLUSTER_USER"
fi
# '*': no password login, but not 'locked' ('!'), which sshd would refuse even for a key.
usermod -p '*' "$CLUSTER_USER"
CLUSTER_HOME=$(getent passwd "$CLUSTER_USER" | cut -d: -f6)

ME_HOME=$(getent passwd "$(id -un)" | cut -d: -f6)

# What the jobs may read, and nothing more. They run .venv/bin/* as that user, so they need, read-only: the venv, the
# package's source (an editable install: the venv's aiida_alml.pth puts this repository on sys.path, and Python lists
# it to find aiida_alml) and the Python the venv links to (e.g. /root/.pyenv/versions/X). Those three trees get o+rX,
# the repository's own directory o+rx, the directories above them o+x (enter, not list). The rest of the repository
# is left as it is: an AiiDA config and its storage can be in it (the demo's AIIDA_PATH=$PWD puts both in .aiida).
venv_works() {
    runuser -u "$CLUSTER_USER" -- "$REPO/.venv/bin/python" -c \
        'import ase, torch, mace, aiida_alml.engines.label, aiida_alml.engines.md, aiida_alml.engines.train' \
        >/dev/null 2>&1
}
base=$("$REPO/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')
job_trees=("$REPO/.venv" "$REPO/aiida_alml" "$base")
if ! venv_works; then
    say "opening to $CLUSTER_USER, read-only: ${job_trees[*]} (o+rX; o+rx on $REPO; o+x on the directories above)"
    for target in "$REPO" "$base"; do
        dir=$(dirname "$target")
        while [ "$dir" != / ]; do chmod o+x "$dir"; dir=$(dirname "$dir"); done
    done
    chmod o+rx "$REPO"
    chmod -R o+rX "${job_trees[@]}"
    venv_works || die "$CLUSTER_USER still cannot run $REPO/.venv/bin/python: check the permissions above it"
fi
# Read-only: the daemon's user (root here) runs the same venv and Python, so a file the job user could change there
# would be code run by the daemon's user (the repository's directory too: Python looks for modules in it). Sticky
# directories (shared scratch, like /tmp) are left as they are.
writable=(! -type l -perm -o+w ! -perm -1000)
if [ -n "$(find "$REPO" -maxdepth 0 -perm -o+w)$(find "${job_trees[@]}" "${writable[@]}" -print -quit)" ]; then
    say "removing write access for others from $REPO and ${job_trees[*]} (o-w)"
    chmod o-w "$REPO"
    find "${job_trees[@]}" "${writable[@]}" -exec chmod o-w {} +
fi
# Never an AiiDA config or storage: a config folder in this repository, in AIIDA_PATH or in the home of the user
# running this script (or of the one who ran sudo) is closed to others (o-rwx), whatever opened it (an earlier version
# of this script ran chmod -R o+rX on the whole repository, .aiida included).
aiida_dirs=("$REPO/.aiida" "$ME_HOME/.aiida")
[ -n "${SUDO_USER:-}" ] && aiida_dirs+=("$(getent passwd "$SUDO_USER" | cut -d: -f6)/.aiida")
IFS=: read -ra entries <<< "${AIIDA_PATH:-}"
for entry in "${entries[@]}"; do
    [ -n "$entry" ] || continue
    entry=${entry/#\~/$ME_HOME}
    [ "$(basename "$entry")" = .aiida ] && aiida_dirs+=("$entry") || aiida_dirs+=("$entry/.aiida")
done
for dir in "${aiida_dirs[@]}"; do
    [ -d "$dir" ] || continue
    dir=$(readlink -f "$dir")
    # A closed folder keeps out everything in it (aiida-alml setup puts the profile's storage there too).
    if [ -n "$(find "$dir" -maxdepth 0 -perm /o=rwx)" ]; then
        say "closing the AiiDA config folder $dir to others (o-rwx)"
        chmod -R o-rwx "$dir"
    fi
done

# ---------------------------------------------------------------------------------------------------- SSH
KEY=$ME_HOME/.ssh/alml_cluster_ed25519
install -d -m 0700 "$ME_HOME/.ssh"
[ -s "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C "aiida daemon of $(id -un)@$HOST" -f "$KEY"
install -d -o "$CLUSTER_USER" -g "$CLUSTER_USER" -m 0700 "$CLUSTER_HOME/.ssh"
auth=$CLUSTER_HOME/.ssh/authorized_keys
touch "$auth" && chown "$CLUSTER_USER:$CLUSTER_USER" "$auth" && chmod 0600 "$auth"
grep -qxF "$(cat "$KEY.pub")" "$auth" || cat "$KEY.pub" >> "$auth"

SSHD_PID=/run/sshd-alml-cluster.pid
if running "$SSHD_PID" && [ "$(cat /run/sshd-alml-cluster.port 2>/dev/null)" != "$SSH_PORT" ]; then
    say "sshd runs on another port: restarting it on $SSH_PORT"
    stop "$SSHD_PID"
fi
if ! running "$SSHD_PID"; then
    say "starting sshd on 127.0.0.1:$SSH_PORT (key login for $CLUSTER_USER only)"
    ssh-keygen -A >/dev/null
    install -d -m 0755 /run/sshd
    /usr/sbin/sshd -p "$SSH_PORT" -o ListenAddress=127.0.0.1 -o PidFile="$SSHD_PID" \
        -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o AllowUsers="$CLUSTER_USER"
    for _ in $(seq 20); do running "$SSHD_PID" && break; sleep 0.2; done
    running "$SSHD_PID" || die "sshd did not start on 127.0.0.1:$SSH_PORT (port taken? set ALML_SSH_PORT)"
    echo "$SSH_PORT" > /run/sshd-alml-cluster.port
fi
known=$ME_HOME/.ssh/known_hosts
touch "$known"
if ! ssh-keygen -F "[127.0.0.1]:$SSH_PORT" -f "$known" >/dev/null; then
    keys=$(ssh-keyscan -p "$SSH_PORT" -t ed25519 127.0.0.1 2>/dev/null) || true
    [ -n "$keys" ] || die "no host key from 127.0.0.1:$SSH_PORT: is sshd listening there?"
    echo "$keys" >> "$known"
fi
config=$ME_HOME/.ssh/config
touch "$config" && chmod 0600 "$config"
if ! grep -q "^Host $SSH_ALIAS\$" "$config"; then
    cat >> "$config" <<EOF

# aiida-alml scripts/cluster.sh: the local SLURM cluster
Host $SSH_ALIAS
    HostName 127.0.0.1
    Port $SSH_PORT
    User $CLUSTER_USER
    IdentityFile $KEY
    IdentitiesOnly yes
EOF
fi
# An alias written by an earlier run with other settings is not silently kept.
resolved=$(ssh -G "$SSH_ALIAS" | awk '$1 == "port" || $1 == "user" {printf "%s=%s ", $1, $2}')
[ "$resolved" = "user=$CLUSTER_USER port=$SSH_PORT " ] || [ "$resolved" = "port=$SSH_PORT user=$CLUSTER_USER " ] \
    || die "Host $SSH_ALIAS in $config says $resolved, not user=$CLUSTER_USER port=$SSH_PORT: remove that block"
ssh -T -o BatchMode=yes "$SSH_ALIAS" 'sinfo -h -o %P' >/dev/null \
    || die "ssh $SSH_ALIAS (${CLUSTER_USER}@127.0.0.1:$SSH_PORT with $KEY) cannot run sinfo"
say "ssh $SSH_ALIAS works: ${CLUSTER_USER}@127.0.0.1:$SSH_PORT, key $KEY"

# ---------------------------------------------------------------------------------------------------- AiiDA
if [ "$SERVICES_ONLY" = 1 ]; then
    say "services ready; for AiiDA's computers and codes: scripts/cluster.sh PROFILE"
    exit 0
fi
args=(--host "$SSH_ALIAS" --username "$CLUSTER_USER" --port "$SSH_PORT" --key "$KEY")
args+=(--workdir "$CLUSTER_HOME/aiida_run")
[ -n "$PROFILE" ] && args+=(--profile "$PROFILE")
.venv/bin/python scripts/cluster_aiida.py "${args[@]}"
