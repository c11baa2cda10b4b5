#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create it, copy this working tree to every worker,
# install, start the same `python -m realign_jax.main` on every worker, wait, fetch the logs,
# delete it. `launch/tpu_vm.sh --help` lists the commands and options.
#
# The same file runs on the workers (the worker-* commands, called over ssh after `setup` has
# copied it there), so what each worker does is readable here rather than hidden in a quoted
# string, and a dry run prints short ssh commands.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh COMMAND [options] [-- MAIN_ARGS...]

commands:
  create   create the TPU VM (a READY one of that name is reused)
  setup    copy this working tree (tracked and untracked files git does not ignore) to every
           worker and install it with the TPU extra into ~/realign_jax/.venv
  run      start `python -m realign_jax.main MAIN_ARGS` on every worker in the background
           (detached: a dropped ssh connection does not stop it); log per worker in
           ~/realign_jax_logs/worker-N.log
  wait     block until the run has ended on every worker; fails if any worker's run failed
  logs     fetch every worker's log into --logs-dir
  stop     SIGTERM the run on every worker (it saves a checkpoint, then exits)
  exec     run the shell command given after -- on every worker
  delete   delete the TPU VM
  all      create, setup, run, wait, logs, and with --delete delete (even when the run failed)
  (worker-setup, worker-run, worker-wait, worker-stop: what setup, run, wait and stop start on
  each worker over ssh)

options (or the environment variable in brackets):
  --name NAME          TPU VM name [TPU_NAME]                                    (required)
  --zone ZONE          e.g. us-east5-a [TPU_ZONE]                                (required)
  --project PROJECT    [TPU_PROJECT]; default: gcloud's configured project
  --type TYPE          accelerator type, e.g. v5p-8, v5litepod-16, v6e-8 [TPU_TYPE] (create)
  --runtime VERSION    TPU software version [TPU_RUNTIME]; default by type: v2-alpha-tpuv6e,
                       v2-alpha-tpuv5, v2-alpha-tpuv5-lite, tpu-ubuntu2204-base (v4 and older)
  --spot | --preemptible   create a Spot / preemptible VM
  --python VERSION     Python of the workers' venv [TPU_PYTHON] (default 3.12; jax needs 3.11+)
  --logs-dir DIR       where `logs` puts the files [TPU_LOGS_DIR] (default tpu_logs/NAME)
  --delete             with `all`: delete the VM at the end
  --dry-run            print every command (gcloud, packing) instead of running it

MAIN_ARGS must include --config and --workdir. Every worker runs the same command and they
write checkpoints together: on a pod slice --workdir must be a folder all workers share (a
Filestore/NFS mount or a gcsfuse-mounted bucket, the same path on every worker); gs:// paths
are refused because the trainer writes through the local filesystem. Data and model paths
must exist on every worker too.

example:
  launch/tpu_vm.sh all --name dpo --zone us-east5-a --type v5litepod-16 --spot --delete -- \
      --config=configs/train_llava.py --workdir=/mnt/runs/dpo
EOF
}

die() { echo "error: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# In each worker's home: the code with its venv, and the logs apart from it (so that `setup`
# can replace the code without losing the logs of earlier runs).
REMOTE_DIR=realign_jax
REMOTE_TARBALL=/tmp/realign_jax.tar.gz
WORKER_LOGS=$HOME/realign_jax_logs

NAME=${TPU_NAME:-} ZONE=${TPU_ZONE:-} PROJECT=${TPU_PROJECT:-} TYPE=${TPU_TYPE:-}
RUNTIME=${TPU_RUNTIME:-} PYTHON_VERSION=${TPU_PYTHON:-3.12} LOGS_DIR=${TPU_LOGS_DIR:-}
PROVISIONING=() DELETE_AT_END=0 DRY_RUN=0 MAIN_ARGS=()

(($#)) || { usage >&2; exit 2; }
case $1 in
  -h|--help) usage; exit 0 ;;
  create|setup|run|wait|logs|stop|exec|delete|all) COMMAND=$1 ;;
  worker-setup|worker-run|worker-wait|worker-stop) COMMAND=$1 ;;
  *) die "unknown command '$1' (see --help)" ;;
esac
shift
while (($#)); do
  # Accept --flag=value as well as --flag value.
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    --name|--zone|--project|--type|--runtime|--python|--logs-dir)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --name) NAME=$2 ;; --zone) ZONE=$2 ;; --project) PROJECT=$2 ;; --type) TYPE=$2 ;;
        --runtime) RUNTIME=$2 ;; --python) PYTHON_VERSION=$2 ;; --logs-dir) LOGS_DIR=$2 ;;
      esac
      shift 2 ;;
    --spot|--preemptible) PROVISIONING=("$1"); shift ;;
    --delete) DELETE_AT_END=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (arguments for realign_jax.main go after --)" ;;
  esac
done

# A word as the shell reads it back: as is when it is plain, else in single quotes (POSIX, so
# any remote shell and Python's shlex read it the same way).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"  # --flag='value' reads better than '--flag=value'
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
quote_all() {
  local word sep=
  for word; do printf '%s' "$sep"; quote "$word"; sep=' '; done
}

# Print a command as a line a shell can run, and run it unless this is a dry run.
run() {
  quote_all "$@"
  echo
  ((DRY_RUN)) || "$@"
}
note() { echo "# $*"; }
tpu() { run gcloud compute tpus tpu-vm "$@"; }
# One shell command on every worker at once; it starts in the worker's home folder.
on_all_workers() { tpu ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker=all --quiet --command="$1"; }
# This script's worker-* command on every worker, with the main arguments quoted word by word
# so that values with spaces, quotes or `$` reach python unchanged.
worker_command() { on_all_workers "bash $REMOTE_DIR/launch/tpu_vm.sh $(quote_all "$@")"; }

require_main_args() {
  local i arg config=0 workdir=
  for ((i = 0; i < ${#MAIN_ARGS[@]}; i++)); do
    arg=${MAIN_ARGS[i]}
    case $arg in
      --config|--config=*) config=1 ;;
      --workdir=*) workdir=${arg#--workdir=} ;;
      --workdir) workdir=${MAIN_ARGS[i + 1]:-} ;;
    esac
  done
  ((config)) || die "'$COMMAND' needs the training command after --, with --config=..." \
    "(e.g. -- --config=configs/train_llava.py --workdir=/mnt/runs/dpo)"
  [[ -n $workdir ]] || die "'$COMMAND' needs --workdir=... after --: a folder every worker sees" \
    "(checkpoints are written there together)"
  [[ $workdir != gs://* ]] || die "--workdir=$workdir: gs:// paths do not work yet (the trainer writes" \
    "through the local filesystem; a gs:// path would become a local folder named 'gs:' on each worker)." \
    "Mount the bucket with gcsfuse on every worker (see docs/launch.md) and give the mount path"
}

cmd_create() {
  [[ -n $TYPE ]] || die "'$COMMAND' needs --type (or TPU_TYPE), e.g. v5p-8, v5litepod-16, v6e-8"
  if [[ -z $RUNTIME ]]; then
    case $TYPE in
      v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
      v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
      v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
      v4-*|v3-*|v2-*) RUNTIME=tpu-ubuntu2204-base ;;
      *) die "no default TPU software version for --type=$TYPE; pass --runtime" ;;
    esac
  fi
  note "reuse $NAME if it exists and is READY, else create it"
  local state
  if ((DRY_RUN)); then
    tpu describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(state)'
  elif state=$(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(state)' \
                 2>/dev/null); then
    [[ $state == READY ]] || die "TPU VM $NAME exists in state $state; a preempted or stopped VM must be" \
      "deleted first: launch/tpu_vm.sh delete --name $NAME --zone $ZONE"
    echo "reusing TPU VM $NAME ($state)"
    return
  fi
  tpu create "$NAME" "${GCLOUD_SCOPE[@]}" --accelerator-type="$TYPE" --version="$RUNTIME" "${PROVISIONING[@]}"
}

# shellcheck disable=SC2016  # the pack script's $1 and $2 are for bash -c, not this shell
cmd_setup() {
  git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$REPO is not a git checkout: setup copies the files git knows of"
  local tarball=${TMPDIR:-/tmp}/realign_jax-$NAME.tar.gz
  note "pack the working tree as it is (uncommitted changes included, ignored files such as .venv left out)"
  # --ignore-failed-read: git still lists files deleted from the tree but not yet committed.
  local pack='git -C "$1" ls-files -z --cached --others --exclude-standard'
  pack+=' | tar -C "$1" --null -T - --ignore-failed-read -czf "$2"'
  run bash -c "$pack" pack "$REPO" "$tarball"
  tpu scp "$tarball" "$NAME:$REMOTE_TARBALL" "${GCLOUD_SCOPE[@]}" --worker=all --quiet
  # Replace the code but keep the venv: reinstalling jax[tpu] from scratch takes minutes.
  local install="mkdir -p $REMOTE_DIR && cd $REMOTE_DIR"
  install+=" && find . -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + && tar -xzf $REMOTE_TARBALL"
  install+=" && bash launch/tpu_vm.sh worker-setup --python $(quote "$PYTHON_VERSION")"
  on_all_workers "$install"
}

cmd_run() {
  require_main_args
  worker_command worker-run -- "${MAIN_ARGS[@]}"
}

cmd_wait() { worker_command worker-wait; }
cmd_stop() { worker_command worker-stop; }

cmd_logs() {
  # gcloud refuses to copy from several workers at once, so copy from one at a time, asking the
  # VM how many workers it has.
  local count=1
  note "one scp per worker 0 .. N-1, N from:"
  if ((DRY_RUN)); then
    tpu describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(networkEndpoints.len())'
  else
    count=$(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(networkEndpoints.len())')
  fi
  run mkdir -p "$LOGS_DIR"
  for ((worker = 0; worker < count; worker++)); do
    tpu scp "$NAME:realign_jax_logs/worker-$worker.log" "$LOGS_DIR/" "${GCLOUD_SCOPE[@]}" --worker="$worker" --quiet
  done
  ((DRY_RUN)) || echo "logs of $count worker(s) in $LOGS_DIR"
}

cmd_exec() {
  ((${#MAIN_ARGS[@]})) || die "'exec' needs a shell command after --"
  on_all_workers "${MAIN_ARGS[*]}"
}

cmd_delete() { tpu delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet; }

cmd_all() {
  require_main_args  # before anything is created
  cmd_create
  cmd_setup
  cmd_run
  local status=0
  cmd_wait || status=$?
  cmd_logs
  if ((DELETE_AT_END)); then cmd_delete; fi
  return "$status"
}

# --- on each worker -------------------------------------------------------------------------

metadata() {
  curl -sSf --max-time 10 -H Metadata-Flavor:Google \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

worker_files() {
  WORKER=$(metadata agent-worker-number)
  LOG=$WORKER_LOGS/worker-$WORKER.log PIDFILE=$WORKER_LOGS/worker-$WORKER.pid
  EXITFILE=$WORKER_LOGS/worker-$WORKER.exit
  mkdir -p "$WORKER_LOGS"
}

cmd_worker-setup() {
  cd "$REPO"
  # The TPU images ship Python 3.10 and jax needs 3.11 or newer: uv provides one.
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m pip install --user --quiet uv
    "$HOME/.local/bin/uv" venv --seed --python "$PYTHON_VERSION" .venv
  fi
  .venv/bin/pip install --quiet -e ".[tpu]"
  .venv/bin/python -c "import jax, realign_jax; print('$(hostname): jax', jax.__version__)"
}

cmd_worker-run() {
  worker_files
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    die "worker $WORKER: a run is still going (pid $(cat "$PIDFILE")); wait for it or stop it"
  fi
  # realign_jax.train.loop joins the workers with jax.distributed.initialize() when
  # JAX_COORDINATOR_ADDRESS is set. On a multi-host slice the coordinator (worker 0, at the
  # port JAX uses on Cloud TPU), the worker count and this worker's index come from the
  # metadata server, as JAX's own Cloud TPU detection reads them.
  local endpoints hosts
  endpoints=$(metadata worker-network-endpoints)
  IFS=, read -ra hosts <<< "$endpoints"
  if ((${#hosts[@]} > 1)); then
    # Entries are hostnames, or name:id:ip in the older format.
    export JAX_COORDINATOR_ADDRESS=${hosts[0]##*:}:8482 JAX_NUM_PROCESSES=${#hosts[@]} JAX_PROCESS_ID=$WORKER
  fi
  cd "$REPO"
  rm -f "$EXITFILE"
  echo "=== $(date -u +%FT%TZ) worker $WORKER of ${#hosts[@]}:" \
    "python -m realign_jax.main $(quote_all "${MAIN_ARGS[@]}")" >> "$LOG"
  # Detached from the ssh session: SIGHUP ignored as nohup does (python inherits that), output
  # to the log, no stdin. The wrapper records its pid (for stop) and the exit status (for wait).
  (
    trap '' HUP
    echo "$BASHPID" > "$PIDFILE"
    status=0
    .venv/bin/python -m realign_jax.main "${MAIN_ARGS[@]}" || status=$?
    echo "$status" > "$EXITFILE"
  ) >> "$LOG" 2>&1 < /dev/null &
  echo "worker $WORKER: started, log $LOG"
}

cmd_worker-wait() {
  # Polls rather than holding on to the process, so that a new ssh connection can wait again.
  worker_files
  [[ -f $PIDFILE ]] || die "worker $WORKER: no run was started"
  while [[ ! -f $EXITFILE ]]; do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      sleep 2  # the wrapper may have ended just now, writing the exit file
      [[ -f $EXITFILE ]] || die "worker $WORKER: the run ended without an exit status (killed with the VM?)"
    fi
    sleep "${TPU_POLL_S:-30}"  # seconds between checks
  done
  local status
  status=$(cat "$EXITFILE")
  echo "worker $WORKER: exit status $status; end of $LOG:"
  tail -n 5 "$LOG"
  return "$status"
}

cmd_worker-stop() {
  worker_files
  # SIGTERM to the wrapper's child, the python process: it saves a checkpoint and exits.
  if [[ -f $PIDFILE ]] && pkill -TERM -P "$(cat "$PIDFILE")"; then
    echo "worker $WORKER: sent SIGTERM"
  else
    echo "worker $WORKER: no run going"
  fi
}

if [[ $COMMAND != worker-* ]]; then
  [[ -n $NAME ]] || die "--name (or TPU_NAME) is required"
  [[ -n $ZONE ]] || die "--zone (or TPU_ZONE) is required"
  LOGS_DIR=${LOGS_DIR:-tpu_logs/$NAME}
  GCLOUD_SCOPE=(--zone="$ZONE")
  [[ -z $PROJECT ]] || GCLOUD_SCOPE+=(--project="$PROJECT")
fi
"cmd_$COMMAND"
