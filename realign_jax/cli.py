"""What the command-line entry points (realign_jax.main, realign_jax.aot) share."""

from __future__ import annotations

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with an unknown `--config.key` reported in one line (it otherwise raises
    a KeyError chain from inside ml_collections)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        raise SystemExit(f"error: {error}\nPass --helpshort to see the flags.") from None
    except (KeyError, AttributeError) as error:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        raise SystemExit(f"error: unknown config key {error} in {bad}") from None
