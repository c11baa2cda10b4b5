"""Preference losses as pure functions of per-row response log-probs (docs/methods.md 1-5).

Inputs are SUMS over response tokens of log pi(y_t | ...), for the policy and the frozen
reference, keyed by row kind:
  chosen            lp(y_w | x, v)
  rejected          lp(y_l | x, v)
  chosen_alt_image  lp(y_w | x, v_l)  (rDPO's retrieved image, mDPO's corrupted image)
  rejected_noisy    lp(y_noisy | x, v) (POVID's noise-triggered response)
and, per kind, the response token count `length_<kind>` (for length normalisation and the
token-mean SFT term) and the policy's token-mean NLL of each chosen answer `nll_chosen` (for the
example-mean SFT term).
Losses never see a model; beta is applied exactly once, inside `_margin`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Rows = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
SFT_NORMALIZE = ("example", "token")


def _key(default: Any, meaning: str) -> Any:
    """A config key with its one-line meaning (read by realign_jax/settings/keys.py)."""
    return dataclasses.field(default=default, metadata={"meaning": meaning})


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyperparameters shared by the registry (docs/methods.md defaults)."""

    beta: float = _key(0.1, "strength of the KL tie to the reference")
    label_smoothing: float = _key(0.0, "epsilon in [0, 0.5): conservative DPO (cDPO) on every sigmoid term, or "
                                       "the label-noise rate of loss.name=robust (TRL's robust loss)")
    length_normalize: bool = _key(False, "divide each log-ratio by its response length")
    sft_weight: float = _key(0.0, "alpha of the added NLL(y_w) term")
    sft_normalize: str = _key("example", "the SFT term's NLL(y_w): example (each answer's token mean, then the "
                                         "mean over examples: RPO's paper) | token (the mean over all chosen "
                                         "tokens of the micro-batch: TRL)")
    visual_weight: float = _key(1.0, "rDPO's w_v: weight of the visual preference term")
    mdpo_anchor_delta: float = _key(0.0, "mDPO's anchor: the chosen reward is pushed above this")
    povid_weights: tuple[float, float, float] = _key((1.0, 1.0, 1.0), "povid_weighted's a, b1, b2")

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"loss.beta={self.beta} must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        if self.sft_normalize not in SFT_NORMALIZE:
            raise ValueError(f"loss.sft_normalize={self.sft_normalize!r}: choose one of {SFT_NORMALIZE}")


def _ratio(policy: Rows, reference: Rows, kind: str, config: LossConfig) -> jax.Array:
    """D(y) = lp_pi - lp_ref, divided by the response length when normalising."""
    ratio = policy[kind] - reference[kind]
    if config.length_normalize:
        ratio = ratio / jnp.maximum(policy[f"length_{kind}"], 1)
    return ratio


def _margin(policy: Rows, reference: Rows, win: str, lose: str, config: LossConfig) -> jax.Array:
    """beta * [D(win) - D(lose)]: the only place beta multiplies a log-ratio."""
    return config.beta * (_ratio(policy, reference, win, config) - _ratio(policy, reference, lose, config))


def _sigmoid(h: jax.Array, config: LossConfig) -> jax.Array:
    eps = config.label_smoothing
    return -(1 - eps) * jax.nn.log_sigmoid(h) - eps * jax.nn.log_sigmoid(-h)


def _reward_metrics(policy: Rows, reference: Rows, win: str, lose: str, config: LossConfig,
                    prefix: str = "") -> Metrics:
    chosen = config.beta * _ratio(policy, reference, win, config)
    rejected = config.beta * _ratio(policy, reference, lose, config)
    return {
        f"{prefix}rewards/chosen": jnp.mean(chosen),
        f"{prefix}rewards/rejected": jnp.mean(rejected),
        f"{prefix}rewards/margins": jnp.mean(chosen - rejected),
        f"{prefix}rewards/accuracies": jnp.mean((chosen > rejected).astype(jnp.float32)),
        f"{prefix}logps/chosen": jnp.mean(policy[win]),
        f"{prefix}logps/rejected": jnp.mean(policy[lose]),
    }


def _two_terms(policy: Rows, reference: Rows, config: LossConfig, second: str,
               prefix: str) -> tuple[jax.Array, jax.Array, Metrics]:
    """Margins of y_w over y_l and over a `second` dispreferred row, with metrics for both."""
    metrics = _reward_metrics(policy, reference, "chosen", "rejected", config)
    metrics.update(_reward_metrics(policy, reference, "chosen", second, config, prefix=prefix))
    h_first = _margin(policy, reference, "chosen", "rejected", config)
    return h_first, _margin(policy, reference, "chosen", second, config), metrics


def sft_nll(policy: Rows, config: LossConfig) -> jax.Array:
    """NLL(y_w) of the SFT / RPO term. `example` (the default) is RPO's paper (arXiv 2404.19733):
    each answer's NLL divided by its own length, then the mean over pairs, so a long answer
    weighs as much as a short one. `token` is TRL's (`loss_type=["sigmoid", "sft"]`, formerly
    `rpo_alpha`): the chosen tokens' log-probs summed over the batch, divided by their count.
    Under train.grad_accum each micro-batch is a batch of its own, as in TRL: `token` is the
    token mean of each micro-batch (over all devices), and the step averages the micro-batches'
    means, which equals the whole batch's token mean only when they hold equal token counts."""
    if config.sft_normalize == "token":
        return -jnp.sum(policy["chosen"]) / jnp.maximum(jnp.sum(policy["length_chosen"]), 1)
    return jnp.mean(policy["nll_chosen"])


def _finish(per_row: jax.Array, policy: Rows, config: LossConfig, metrics: Metrics) -> tuple[jax.Array, Metrics]:
    """Mean over rows, plus the optional SFT term alpha * NLL(y_w)."""
    loss = jnp.mean(per_row)
    if config.sft_weight:
        nll = sft_nll(policy, config)
        loss = loss + config.sft_weight * nll
        metrics["nll/chosen"] = nll
    metrics["loss"] = loss
    return loss, metrics


def dpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """Sigmoid DPO with optional label smoothing (conservative DPO)."""
    h = _margin(policy, reference, "chosen", "rejected", config)
    return _finish(_sigmoid(h, config), policy, config, _reward_metrics(policy, reference, "chosen", "rejected", config))


def robust(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """Robust DPO (Chowdhury et al. 2024, TRL's `loss_type="robust"`), eps = label_smoothing:
    (-(1-eps) logsig(h) + eps logsig(-h)) / (1 - 2 eps). Unlike cDPO's -(1-eps) logsig(h)
    - eps logsig(-h), its flipped term enters with a plus sign: an unbiased estimate of the
    clean-label loss when labels flip with probability eps, not a smoothed target."""
    h = _margin(policy, reference, "chosen", "rejected", config)
    eps = config.label_smoothing
    per_row = (-(1 - eps) * jax.nn.log_sigmoid(h) + eps * jax.nn.log_sigmoid(-h)) / (1 - 2 * eps)
    return _finish(per_row, policy, config, _reward_metrics(policy, reference, "chosen", "rejected", config))


def ipo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """(h - 1/(2 beta))^2 with length-normalised log-ratios (IPO always normalises)."""
    normalized = dataclasses.replace(config, length_normalize=True)
    h = _ratio(policy, reference, "chosen", normalized) - _ratio(policy, reference, "rejected", normalized)
    per_row = jnp.square(h - 1 / (2 * config.beta))
    # Rewards are logged as beta * D(y) on raw sums (docs/methods.md section 1, and TRL's IPO logs).
    return _finish(per_row, policy, config, _reward_metrics(policy, reference, "chosen", "rejected", config))


def hinge(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """relu(1 - beta * h)."""
    h = _margin(policy, reference, "chosen", "rejected", config)
    return _finish(jax.nn.relu(1 - h), policy, config, _reward_metrics(policy, reference, "chosen", "rejected", config))


def rdpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """Re-Align Eq. 1: -logsig(h_txt) - w_v * logsig(h_vis), h_vis contrasting y_w under v and v_l."""
    h_txt, h_vis, metrics = _two_terms(policy, reference, config, "chosen_alt_image", "visual/")
    per_row = _sigmoid(h_txt, config) + config.visual_weight * _sigmoid(h_vis, config)
    return _finish(per_row, policy, config, metrics)


def mdpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """DPO + conditional term on the corrupted image + anchor -logsig(beta*D(y_w) - delta)."""
    h_txt, h_vis, metrics = _two_terms(policy, reference, config, "chosen_alt_image", "visual/")
    anchor = config.beta * _ratio(policy, reference, "chosen", config) - config.mdpo_anchor_delta
    per_row = _sigmoid(h_txt, config) + _sigmoid(h_vis, config) - jax.nn.log_sigmoid(anchor)
    return _finish(per_row, policy, config, metrics)


def povid(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """POVID stage 2 as the public scripts: mean of the injected-text and noisy-image DPO terms."""
    h_inj, h_noisy, metrics = _two_terms(policy, reference, config, "rejected_noisy", "noisy/")
    per_row = 0.5 * _sigmoid(h_inj, config) + 0.5 * _sigmoid(h_noisy, config)
    return _finish(per_row, policy, config, metrics)


def povid_weighted(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """POVID as the paper writes it: -logsig(beta * [a*D_w - (b1*D_inj + b2*D_noisy)])."""
    a, b1, b2 = config.povid_weights
    d = {k: _ratio(policy, reference, k, config) for k in ("chosen", "rejected", "rejected_noisy")}
    h = config.beta * (a * d["chosen"] - (b1 * d["rejected"] + b2 * d["rejected_noisy"]))
    *_, metrics = _two_terms(policy, reference, config, "rejected_noisy", "noisy/")
    return _finish(_sigmoid(h, config), policy, config, metrics)


LossFn = Callable[[Rows, Rows, LossConfig], tuple[jax.Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and the rows it reads, in the order a batch stacks them
    (the `sft` objective, not a loss, reads chosen only)."""

    fn: LossFn
    rows: tuple[str, ...]


_PAIR = ("chosen", "rejected")
LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo, _PAIR), "robust": LossSpec(robust, _PAIR), "ipo": LossSpec(ipo, _PAIR),
    "hinge": LossSpec(hinge, _PAIR),
    "rdpo": LossSpec(rdpo, (*_PAIR, "chosen_alt_image")), "mdpo": LossSpec(mdpo, (*_PAIR, "chosen_alt_image")),
    "povid": LossSpec(povid, (*_PAIR, "rejected_noisy")),
    "povid_weighted": LossSpec(povid_weighted, (*_PAIR, "rejected_noisy")),
}


def loss_spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is unknown; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def get_loss(name: str) -> LossFn:
    return loss_spec(name).fn
