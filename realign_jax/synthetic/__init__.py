"""The embedded default data: a procedurally drawn world of simple objects with a strong
co-occurrence prior, its ground truth, SFT text and tokenizer (docs/design.md,
"The embedded default: a synthetic world"). `generate_world(WorldConfig(), out_dir)` writes it."""

from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.world import generate_world

__all__ = ["WorldConfig", "generate_world"]
