"""launch/: the TPU VM script's dry run (every gcloud command, quoting, refusals) and its
worker side run against a fake metadata server; the SLURM script's dry run, its per-task GPU
choice, and a real two-process training run under a faked SLURM job on localhost (fake `srun`,
JAX's own SLURM detection)."""

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "slurm.sbatch"
# A --config.x value a naive launcher would break: spaces, both quotes, a `$` and a glob.
NASTY = """--config.data.path=/data/my file's "pairs" $HOME *.jsonl"""
MAIN_ARGS = ["--config=configs/train_llava.py", "--workdir=/mnt/runs/dpo", NASTY]
SCOPE = ["--name", "t1", "--zone", "us-east5-a", "--project", "my-proj"]


def _bash(script: Path, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_", "JAX_"))}
    return subprocess.run(["bash", str(script), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})}, cwd=REPO)


def _commands(stdout: str) -> list[list[str]]:
    """The dry run's command lines (comments left out) as argument lists."""
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _flag(argv: list[str], name: str) -> str:
    values = [a[len(name) + 1:] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


@pytest.mark.parametrize("script", [TPU, SLURM])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True).returncode == 0


def test_tpu_dry_run_prints_every_step_for_all_workers():
    result = _bash(TPU, "all", *SCOPE, "--type", "v5litepod-16", "--spot", "--delete", "--dry-run", "--", *MAIN_ARGS)
    assert result.returncode == 0, result.stderr
    commands = _commands(result.stdout)
    gcloud = [c[4:] for c in commands if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
    assert [c[0] for c in gcloud] == ["describe", "create", "scp", "ssh", "ssh", "ssh", "describe", "scp", "delete"]
    for c in gcloud:
        assert c[1] == "t1" or c[0] == "scp", c
        assert "--zone=us-east5-a" in c and "--project=my-proj" in c, c
    create = gcloud[1]
    assert "--accelerator-type=v5litepod-16" in create and "--version=v2-alpha-tpuv5-lite" in create
    assert "--spot" in create
    upload, setup, start, wait = gcloud[2:6]
    assert upload[1].endswith(".tar.gz") and upload[2] == "t1:/tmp/realign_jax.tar.gz" and "--worker=all" in upload
    for ssh in (setup, start, wait):
        assert "--worker=all" in ssh, ssh
    setup_command = _flag(setup, "--command")
    assert "tar -xzf /tmp/realign_jax.tar.gz" in setup_command and "worker-setup --python 3.12" in setup_command
    # One command line, the same for every worker (--worker=all), that hands python the
    # arguments exactly as given.
    remote = shlex.split(_flag(start, "--command"))
    assert remote == ["bash", "realign_jax/launch/tpu_vm.sh", "worker-run", "--", *MAIN_ARGS]
    assert shlex.split(_flag(wait, "--command"))[-1] == "worker-wait"
    fetch = gcloud[7]
    assert fetch[1] == "t1:realign_jax_logs/worker-0.log" and "--worker=0" in fetch


def test_tpu_dry_run_packs_the_working_tree(tmp_path):
    """The pack command the dry run prints, run for real: the tree's files, no venv."""
    result = _bash(TPU, "setup", *SCOPE, "--dry-run")
    assert result.returncode == 0, result.stderr
    pack = next(c for c in _commands(result.stdout) if c[0] == "bash")
    tarball = tmp_path / "tree.tar.gz"
    subprocess.run([*pack[:-1], str(tarball)], check=True, timeout=60)
    names = set(subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True,
                               check=True).stdout.split())
    assert {"pyproject.toml", "realign_jax/main.py", "launch/tpu_vm.sh", "configs/train_llava.py"} <= names
    assert not any(n.startswith((".venv", ".git/")) or "__pycache__" in n for n in names)


def test_tpu_stop_exec_delete_dry_run():
    stop = _commands(_bash(TPU, "stop", *SCOPE, "--dry-run").stdout)
    assert len(stop) == 1 and "--worker=all" in stop[0]
    assert shlex.split(_flag(stop[0], "--command")) == ["bash", "realign_jax/launch/tpu_vm.sh", "worker-stop"]
    mount = "sudo mkdir -p /mnt/runs && gcsfuse --implicit-dirs my-bucket /mnt/runs"
    (exec_,) = _commands(_bash(TPU, "exec", *SCOPE, "--dry-run", "--", mount).stdout)
    assert "--worker=all" in exec_ and _flag(exec_, "--command") == mount
    (delete,) = _commands(_bash(TPU, "delete", *SCOPE, "--dry-run").stdout)
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1"] and "--quiet" in delete


def test_tpu_runtime_follows_type():
    defaults = {"v5p-8": "v2-alpha-tpuv5", "v6e-8": "v2-alpha-tpuv6e", "v4-32": "tpu-ubuntu2204-base"}
    for tpu_type, runtime in defaults.items():
        result = _bash(TPU, "create", *SCOPE, "--type", tpu_type, "--dry-run")
        create = next(c for c in _commands(result.stdout) if "create" in c)
        assert f"--version={runtime}" in create
    result = _bash(TPU, "create", *SCOPE, "--type=v5p-8", "--runtime=custom-image", "--preemptible", "--dry-run")
    create = next(c for c in _commands(result.stdout) if "create" in c)
    assert "--version=custom-image" in create and "--preemptible" in create


@pytest.mark.parametrize("args, message", [
    (["run", "--zone", "z", "--dry-run", "--", *MAIN_ARGS], "--name (or TPU_NAME) is required"),
    (["run", "--name", "t1", "--dry-run", "--", *MAIN_ARGS], "--zone (or TPU_ZONE) is required"),
    (["create", "--name", "t1", "--zone", "z", "--dry-run"], "'create' needs --type"),
    (["all", "--name", "t1", "--zone", "z", "--dry-run", "--", *MAIN_ARGS], "'all' needs --type"),
    (["run", "--name", "t1", "--zone", "z", "--dry-run"], "needs the training command after --"),
    (["run", "--name", "t1", "--zone", "z", "--dry-run", "--", "--config=c.py"], "needs --workdir"),
    (["run", "--name", "t1", "--zone", "z", "--dry-run", "--", "--config=c.py", "--workdir", "gs://b/run"],
     "gs:// paths do not work"),
    (["create", "--name", "t1", "--zone", "z", "--type", "v9-8", "--dry-run"], "pass --runtime"),
    (["run", "--name", "t1", "--zone", "z", "--config=c.py"], "unknown option '--config'"),
    (["launch", "--name", "t1"], "unknown command 'launch'"),
    (["create", "--name"], "--name needs a value"),
])
def test_tpu_refuses_bad_invocations(args, message):
    result = _bash(TPU, *args)
    assert result.returncode == 2 and message in result.stderr, (result.stdout, result.stderr)
    assert "gcloud" not in result.stdout  # refused before anything was done


def test_tpu_settings_from_environment():
    env = {"TPU_NAME": "envtpu", "TPU_ZONE": "europe-west4-b", "TPU_TYPE": "v5p-8"}
    result = _bash(TPU, "create", "--dry-run", env=env)
    create = next(c for c in _commands(result.stdout) if "create" in c)
    assert create[5] == "envtpu" and "--zone=europe-west4-b" in create and "--project" not in " ".join(create)


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_accepts_every_printed_command(tmp_path):
    """gcloud parses each printed command (exit 2 = bad arguments); with no account configured
    it stops right after, before any network call."""
    result = _bash(TPU, "all", *SCOPE, "--type", "v5p-8", "--spot", "--delete", "--dry-run", "--", *MAIN_ARGS)
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    seen, procs = set(), []
    for command in _commands(result.stdout):
        if command[0] == "gcloud" and command[4] not in seen:  # one per subcommand keeps it fast
            seen.add(command[4])
            procs.append((command, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    text=True)))
    assert seen == {"describe", "create", "scp", "ssh", "delete"}
    for command, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 2 and "unrecognized arguments" not in err, (command, err)


# --- the TPU script's worker side, against a fake metadata server and a fake python ---------

FAKE_PYTHON = """#!/usr/bin/env python3
import json, os, signal, sys, time
record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "jax": {k: v for k, v in os.environ.items() if k.startswith("JAX_")},
          "sighup_ignored": signal.getsignal(signal.SIGHUP) == signal.SIG_IGN}
with open(os.environ["FAKE_RECORD"], "w") as f:
    json.dump(record, f)
if os.environ.get("FAKE_SLEEP"):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as the trainer: save, then exit
    time.sleep(60)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""

FAKE_CURL = """#!/usr/bin/env bash
case "$*" in
  *instance/attributes/agent-worker-number*) printf %s "$FAKE_WORKER" ;;
  *instance/attributes/worker-network-endpoints*) printf %s "$FAKE_ENDPOINTS" ;;
  *) exit 22 ;;
esac
"""


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def worker(tmp_path):
    """A worker's home after setup: ~/realign_jax with this script and a fake venv python."""
    home = tmp_path / "home"
    checkout = home / "realign_jax"
    (checkout / "launch").mkdir(parents=True)
    shutil.copy(TPU, checkout / "launch" / "tpu_vm.sh")
    _executable(checkout / ".venv" / "bin" / "python", FAKE_PYTHON)
    _executable(tmp_path / "bin" / "curl", FAKE_CURL)
    record = tmp_path / "record.json"
    env = {"HOME": str(home), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_RECORD": str(record),
           "TPU_POLL_S": "0.2"}

    def call(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return _bash(checkout / "launch" / "tpu_vm.sh", *args, env={**env, **extra})

    def wait_for_record() -> dict:
        for _ in range(200):
            if record.exists() and record.stat().st_size:
                return json.loads(record.read_text())
            time.sleep(0.05)
        raise AssertionError("the fake python never ran")

    return call, wait_for_record, home


def test_worker_run_on_a_pod_slice_joins_the_other_workers(worker):
    call, wait_for_record, home = worker
    pod = {"FAKE_WORKER": "2", "FAKE_ENDPOINTS": "w-0:0:10.0.0.5,w-1:1:10.0.0.6,w-2:2:10.0.0.7,w-3:3:10.0.0.8"}
    started = call("worker-run", "--", *MAIN_ARGS, **pod)
    assert started.returncode == 0, started.stderr
    record = wait_for_record()
    assert record["argv"] == ["-m", "realign_jax.main", *MAIN_ARGS]
    assert record["cwd"] == str(home / "realign_jax")
    assert record["jax"] == {"JAX_COORDINATOR_ADDRESS": "10.0.0.5:8482", "JAX_NUM_PROCESSES": "4",
                             "JAX_PROCESS_ID": "2"}
    assert record["sighup_ignored"]  # survives the ssh session's end
    waited = call("worker-wait", **pod)
    assert waited.returncode == 0, waited.stderr
    assert "worker 2: exit status 0" in waited.stdout
    log = (home / "realign_jax_logs" / "worker-2.log").read_text()
    assert "worker 2 of 4: python -m realign_jax.main" in log and shlex.split(log.splitlines()[0])[-1] == NASTY


def test_worker_run_single_host_and_failures(worker):
    call, wait_for_record, _ = worker
    one = {"FAKE_WORKER": "0", "FAKE_ENDPOINTS": "t1v-n-abc-w-0"}
    assert call("worker-run", "--", *MAIN_ARGS, FAKE_EXIT="3", **one).returncode == 0
    assert wait_for_record()["jax"] == {}  # one host: nothing to join
    waited = call("worker-wait", **one)
    assert waited.returncode == 3 and "exit status 3" in waited.stdout  # `wait` fails with the run


def test_worker_refuses_a_second_run_and_stops_the_first(worker):
    call, wait_for_record, _ = worker
    one = {"FAKE_WORKER": "0", "FAKE_ENDPOINTS": "t1v-n-abc-w-0"}
    assert call("worker-run", "--", *MAIN_ARGS, FAKE_SLEEP="1", **one).returncode == 0
    wait_for_record()
    again = call("worker-run", "--", *MAIN_ARGS, **one)
    assert again.returncode == 2 and "a run is still going" in again.stderr
    stopped = call("worker-stop", **one)
    assert "sent SIGTERM" in stopped.stdout
    waited = call("worker-wait", **one)
    assert waited.returncode == 0 and "exit status 0" in waited.stdout
    assert "no run going" in call("worker-stop", **one).stdout


# --- SLURM -------------------------------------------------------------------------------------

def test_slurm_dry_run_prints_one_srun_for_all_tasks():
    result = _bash(SLURM, "--dry-run", *MAIN_ARGS)
    assert result.returncode == 0, result.stderr
    srun = [c for c in _commands(result.stdout) if c[0] == "srun"]
    assert len(srun) == 1
    command = srun[0]
    assert "--kill-on-bad-exit=1" in command and "--output=/mnt/runs/dpo/logs/slurm-%j-task%t.log" in command
    assert command[command.index("bash"):] == ["bash", str(SLURM), "--task", *MAIN_ARGS]
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--workdir=/x"], "give the training arguments, with --config"),
    (["--dry-run", "--config=configs/train_llava.py"], "give --workdir"),
    (["--config=configs/train_llava.py", "--workdir=/x"], "not inside a SLURM job"),
])
def test_slurm_refuses_bad_invocations(args, message):
    result = _bash(SLURM, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("tasks, nodes, expected", [("2", "2", "0,1,2,3"), ("16", "2", None)])
def test_slurm_task_gives_jax_the_gpus_of_its_node(tmp_path, tasks, nodes, expected):
    """One task per node: all the GPUs SLURM gave it (JAX alone would take device SLURM_LOCALID
    only); several tasks per node: JAX's one GPU per task."""
    venv = tmp_path / "venv"
    _executable(venv / "bin" / "python", FAKE_PYTHON)
    env = {"VENV": str(venv), "FAKE_RECORD": str(tmp_path / "record.json"), "CUDA_VISIBLE_DEVICES": "4,5,6,7",
           "SLURM_NTASKS": tasks, "SLURM_STEP_NUM_NODES": nodes, "SLURM_PROCID": "1"}
    result = _bash(SLURM, "--task", *MAIN_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["argv"] == ["-m", "realign_jax.main", *MAIN_ARGS] and record["cwd"] == str(REPO)
    assert record["jax"].get("JAX_LOCAL_DEVICE_IDS") == expected


FAKE_SRUN = """#!/usr/bin/env python3
# srun on one machine: SLURM_NTASKS copies of the command, each with the variables srun gives a
# task, every node being localhost.
import json, os, subprocess, sys, time
args = sys.argv[1:]
options = {}
while args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    options[key] = value
with open(os.environ["FAKE_SRUN_RECORD"], "w") as f:
    json.dump({"options": options, "command": args}, f)
tasks, nodes = int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_JOB_NUM_NODES"])
procs = []
for i in range(tasks):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i % (tasks // nodes)), SLURM_NODEID=str(i),
               SLURM_STEP_NODELIST=",".join(["localhost"] * nodes), SLURM_STEP_NUM_NODES=str(nodes),
               SLURM_STEP_NUM_TASKS=str(tasks))
    with open(options["output"].replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", str(i)), "w") as out:
        procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT))
while any(p.poll() is None for p in procs):
    if options.get("kill-on-bad-exit") == "1" and any(p.poll() not in (None, 0) for p in procs):
        for p in procs:
            if p.poll() is None:
                p.kill()
    time.sleep(0.1)
sys.exit(max((p.returncode for p in procs), key=abs))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_slurm_job_on_two_fake_nodes_trains_as_one(tmp_path):
    """The batch script as sbatch would run it, in a faked 2-node job: srun starts the two tasks,
    JAX's SLURM detection joins them (coordinator = first node of SLURM_STEP_NODELIST), and they
    train as one job: only process 0 writes metrics, once per step."""
    _executable(tmp_path / "bin" / "srun", FAKE_SRUN)
    workdir = tmp_path / "run"
    job = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_SRUN_RECORD": str(tmp_path / "srun.json"),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_NTASKS": "2",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_ON_NODE": "2", "SLURM_SUBMIT_DIR": str(REPO),
           # JAX's port from the job id could be taken on a shared machine; JAX reads this override.
           "JAX_COORDINATOR_PORT": str(_free_port()),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    args = ["--config=configs/train_llava.py", f"--workdir={workdir}", "--config.train.steps=4",
            "--config.data.num_examples=32", "--config.train.log_every=1", "--config.train.export=False"]
    result = _bash(SLURM, *args, env=job, timeout=400)
    logs = {p.name: p.read_text() for p in (workdir / "logs").glob("*.log")}
    assert result.returncode == 0, (result.stderr, {k: v[-3000:] for k, v in logs.items()})
    srun = json.loads((tmp_path / "srun.json").read_text())
    assert srun["options"]["cpus-per-task"] == "2" and srun["options"]["kill-on-bad-exit"] == "1"
    assert sorted(logs) == ["slurm-4242-task0.log", "slurm-4242-task1.log"]
    assert "task 0 of 2" in logs["slurm-4242-task0.log"] and "task 1 of 2" in logs["slurm-4242-task1.log"]
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # two unjoined processes would both be process 0 and log twice
    assert (workdir / "checkpoints" / "4").is_dir()
