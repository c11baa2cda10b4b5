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


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "realign_jax.main", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.mark.parametrize("override,message", [
    ("--config.generate.foo=1", "unknown config key"),
    ("--config.generate.max_new_tokens=abc", "max_new_tokens"),
    ("--config.generate.top_p=0", "top_p"),
    ("--config.mode=eval", "not implemented yet"),
])
def test_bad_config_is_one_line(tmp_path, override, message):
    result = _cli("--config=configs/generate_llava.py", f"--workdir={tmp_path}", override)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
