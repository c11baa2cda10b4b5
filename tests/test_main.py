"""The command line: the generate mode end to end, and one-line errors for bad config."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from realign_jax import main as cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import generate_llava  # noqa: E402


def test_generate_mode_captions_given_images(tmp_path):
    config = generate_llava.get_config()
    config.generate.max_new_tokens = 5
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40 + 10 * i, 50), colour).save(path)
        paths.append(str(path))
    config.data.images = ",".join(paths)
    config.generate.batch_size = 2
    cli.run(config, str(tmp_path / "work"))
    records = [json.loads(line) for line in open(tmp_path / "work" / "generations.jsonl")]
    assert [r["image"] for r in records] == paths
    assert all(1 <= len(r["token_ids"]) <= 5 for r in records)
    # The random checkpoint the run wrote is a real transformers checkpoint.
    import transformers

    transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "work" / "random_tiny_llava"))

    # A rerun that meets a bad image stops, and the finished run's outputs stay as they were.
    before = (tmp_path / "work" / "generations.jsonl").read_text()
    config.data.images = ",".join(paths + [str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="missing.png: image file not found"):
        cli.run(config, str(tmp_path / "work"))
    assert (tmp_path / "work" / "generations.jsonl").read_text() == before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "realign_jax.main", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.mark.parametrize("override,message", [
    ("--config.generate.foo=1", "unknown config key"),
    ("--config.generate.max_new_tokenz=1",
     "unknown config key 'max_new_tokenz' in --config.generate.max_new_tokenz=1; did you mean \"max_new_tokens\""),
    ("--config.generate.max_new_tokens=abc", "max_new_tokens"),
    ("--config.generate.top_p=0", "top_p"),
    ("--config.mode=pipeline", "needs the config sections ['world', 'sft', 'pairs', 'align', 'eval']"),
    ("--config.mode=eval", "needs the config sections ['eval']; start from configs/eval_world.py"),
])
def test_bad_config_is_one_line(tmp_path, override, message):
    result = _cli("--config=configs/generate_llava.py", f"--workdir={tmp_path}", override)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--config=configs/nope.py"], "--config could not be loaded: [Errno 2] No such file or directory: "
                                   "'configs/nope.py' (a relative path is read from the current directory"),
    (["--config=configs/train_llava.py", "--workdir="], "--workdir is empty"),
    (["--config=configs/sft_world.py:x"], "error: --config=configs/sft_world.py:x: configs/sft_world.py:x: choose one "
                                          "of ['captions', 'grounding']"),
])
def test_a_missing_config_file_or_an_empty_workdir_is_one_line(args, message):
    result = _cli(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.reference=lora_off --config.lora.rank=0", "reference='lora_off' needs lora.rank > 0"),
    ("--config.loss.name=povid --config.loss.noisy_scoring=argmax --config.reference=precomputed",
     "cannot go with loss.noisy_scoring='argmax'"),
    ("--config.loss.name=dpo2", "loss.name='dpo2' is unknown"),
    ("--config.optim.lr_groups=projector", "optim.lr_groups item 'projector'"),
    ("--config.train.batch_size=6", "not divisible by the"),
    ("--config.loss.beta=-1", "loss.beta=-1.0 must be positive"),
    ("--config.train.steps=ten", "steps"),
    ("--config.loss.beta=nan", "config values must be finite numbers: loss.beta=nan"),
    ("--config.model.dtype=float16", "XLA on CPU has no float16 matmul"),
    ("--config.optim.lr=inf --config.optim.clip_norm=nan", "optim.clip_norm=nan, optim.lr=inf"),
])
def test_bad_training_config_is_one_line(tmp_path, override, message):
    result = _cli("--config=configs/train_llava.py", f"--workdir={tmp_path}", *override.split())
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")  # rejected before anything was built


def test_xla_mode_writes_a_trace_and_the_optimised_hlo(tmp_path, capsys):
    import train_llava

    config = train_llava.get_config()
    config.train.steps = 6
    config.train.checkpoint_every = 0
    config.train.export = False
    cli.run(config, str(tmp_path), xla=True)
    printed = capsys.readouterr().out
    hlo = tmp_path / "xla" / "train_step.optimized_hlo.txt"
    assert str(hlo) in printed and "HloModule" in hlo.read_text()
    assert "temp" in (tmp_path / "xla" / "train_step.memory.txt").read_text()
    traces = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "profile") for f in files]
    assert any(t.endswith(".xplane.pb") for t in traces), traces
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in logged] == list(range(1, 7))
    assert _tensorboard_scalars(tmp_path / "tensorboard", "loss") == pytest.approx([r["loss"] for r in logged])


def _tensorboard_scalars(directory, tag):
    """(step-ordered) values of one scalar, read from the TFRecord event files directly."""
    import struct

    from tensorboardX.proto import event_pb2

    values = {}
    for name in os.listdir(directory):
        data = (directory / name).read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = value.simple_value
    return [values[step] for step in sorted(values)]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """A preempted run (SIGTERM) writes a checkpoint at the step it reached, and the next run
    resumes there."""
    import signal
    import time

    args = [sys.executable, "-m", "realign_jax.main", "--config=configs/train_llava.py", f"--workdir={tmp_path}",
            "--config.train.steps=100000", "--config.train.checkpoint_every=0", f"--compile_cache={tmp_path}/xla"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert len(steps) == 1 and steps[0] == logged[-1] >= 3
    assert any(name.startswith("jit_") for name in os.listdir(tmp_path / "xla"))  # the step kept for the next run


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """Ctrl-C is a stop request like SIGTERM: the step ends, a checkpoint is written there, exit 0
    with the resume line and no traceback. The signal goes to the process group, as a terminal
    sends it."""
    import signal
    import time

    args = [sys.executable, "-m", "realign_jax.main", "--config=configs/train_llava.py", f"--workdir={tmp_path}",
            "--config.train.steps=100000", "--config.train.checkpoint_every=0", f"--compile_cache={tmp_path}/xla"]
    metrics = tmp_path / "metrics.jsonl"
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and (
            not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "Ctrl-C: saving a checkpoint" in stderr and "run the same command to resume" in stdout
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
    assert len(saved) == 1 and saved[0] == json.loads(metrics.read_text().splitlines()[-1])["step"] >= 2


def test_a_stopped_run_does_not_return_as_finished(tmp_path, capsys):
    """A stage that stops on a signal ends the command (exit 0, the resume line) instead of
    returning: the pipeline must not go on to the next stage without this stage's export."""
    import signal
    import threading
    import time

    import train_llava

    config = train_llava.get_config()
    config.train.steps = 100000
    config.train.checkpoint_every = 0
    metrics = tmp_path / "metrics.jsonl"

    def stop_after_two_steps() -> None:
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_after_two_steps, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        cli.run(config, str(tmp_path))
    assert stopped.value.code == 0
    assert "run the same command to resume" in capsys.readouterr().out
    assert not (tmp_path / "export").exists()


SECOND_CTRL_C = """
import os, signal, time
from realign_jax.train.interrupts import StopRequests
stops = StopRequests()
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("first:", stops.requested, flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("still running", flush=True)
"""


def test_a_second_ctrl_c_exits_at_once():
    """The first Ctrl-C only asks the loop to stop; the second one ends the process with 130 at once
    (as safe as the SIGKILLs the kill harness survives)."""
    result = subprocess.run([sys.executable, "-c", SECOND_CTRL_C], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stdout.splitlines() == ["first: Ctrl-C"]
    assert "second Ctrl-C: exiting now" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("config_file,arg", [("povid_train", None), ("povid_train", "noise"), ("bdhs_train", "online"),
                                             ("realign_train", None),
                                             ("realign_pairs", None), ("bdhs_pairs", None)])
def test_configs_that_align_a_trained_model_require_its_path(tmp_path, config_file, arg):
    """They start from a trained model: without model.path they stop at once, naming the key,
    before a world is generated or anything is built."""
    import importlib

    from realign_jax.main import run

    sys.path.insert(0, os.path.join(REPO, "configs"))
    config = importlib.import_module(config_file).get_config(arg)
    config.data.path = str(tmp_path / "records.jsonl")  # keeps the pair builders off the world
    with pytest.raises(ValueError, match="model.path is empty"):
        run(config, str(tmp_path / "work"))
    assert not os.path.exists(tmp_path / "work" / "world") and not os.path.exists(tmp_path / "work" / "checkpoints")
