"""What the command-line entry points (realign_jax.main, realign_jax.aot) share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from absl import flags


def _config_folder_importable(argv: list[str]) -> None:
    """Put the `--config` file's folder on the import path: configs/*.py import configs/common.py
    as `common`, and absl loads the file by path, from wherever the command runs."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            folder = os.path.dirname(os.path.abspath(arg.removeprefix("--config=").partition(":")[0]))
            if folder not in sys.path:
                sys.path.insert(0, folder)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with an unknown `--config.key` reported in one line (it otherwise raises
    a KeyError chain from inside ml_collections)."""
    _config_folder_importable(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        text = str(error)
        if "Error whilst parsing config file" in text:  # get_config refused its :ARG: its one line, not the trace
            flag = text.split(": Error whilst", 1)[0].removeprefix("flag ")
            reason = text.strip().splitlines()[-1].partition(": ")[2] or text.strip().splitlines()[-1]
            raise SystemExit(f"error: {flag}: {reason}") from None
        raise SystemExit(f"error: {error}\nPass --helpshort to see the flags.") from None
    except (KeyError, AttributeError) as error:
        # ml_collections' KeyError carries "'key'\nDid you mean ...?", its AttributeError that KeyError.
        message: object = error
        while isinstance(message, BaseException) and message.args:
            message = message.args[0]
        key, _, suggestion = str(message).partition("\n")
        key = key.strip("'\"")
        given = [a for a in argv[1:] if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")]
        hint = f"; {suggestion[0].lower()}{suggestion[1:]}" if suggestion else ""
        raise SystemExit(f"error: unknown config key {key!r} in {', '.join(given) or 'the --config overrides'}"
                         f"{hint}") from None


def config_value(read: Callable[[], Any]) -> Any:
    """The `--config` flag's ConfigDict from `read()` (None when not given), or one line saying why
    the file could not be loaded: absl defers the failure to that read, as a chained OSError."""
    try:
        config = read()
        if config is not None:
            config.get("mode")  # a file that failed to load fails on its first use, here
        return config
    except OSError as error:
        reason = str(error).strip().splitlines()[-1].strip()
        raise SystemExit(f"error: --config could not be loaded: {reason} (a relative path is read from the "
                         f"current directory, {os.getcwd()}: run from the repository root or give an absolute "
                         "path)") from None
