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
Each registered term returns its per-row loss and its metrics; `loss_spec` makes one term, or a
`+`-joined weighted sum of them, the total loss. Losses never see a model. The reference-free
terms (simpo, cpo, orpo, sft) never read `reference`, and a run of them has no reference forward.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
    weights: tuple[float, ...] = _key((), "weights of the losses joined by '+' in loss.name, in its order (empty: "
                                          "1 each); MPO is loss.name=sigmoid+bco_pair+sft with (0.8, 0.2, 1.0)")
    simpo_gamma: float = _key(0.5, "SimPO's target reward margin gamma (TRL's simpo_gamma)")
    discopop_tau: float = _key(0.05, "DiscoPOP's temperature tau of the blend (TRL's discopop_tau)")
    combined_weight: float = _key(0.5, "dpo_combined's g: weight of the external rejected answer, 1 - g of "
                                       "the self-generated rejected_sampled (BDHS)")
    wpo: bool = _key(False, "WPO (TRL's use_weighting): each pair's loss times the policy's weights of y_w and y_l, "
                            "exp(mean_t log p(y_t) - log sum_v p(v)^2), without gradient")

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"loss.beta={self.beta} must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        if not 0 <= self.combined_weight <= 1:
            raise ValueError(f"loss.combined_weight={self.combined_weight} must be in [0, 1]")
        if self.discopop_tau <= 0:
            raise ValueError(f"loss.discopop_tau={self.discopop_tau} must be positive")
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


def _per_row(h: jax.Array, policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """A pairwise term's per-row loss with the pair's reward metrics."""
    return h, _reward_metrics(policy, reference, "chosen", "rejected", config)


def _log_ratios(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, jax.Array]:
    """beta * D(y_w), beta * D(y_l): the implicit rewards several TRL losses act on separately."""
    return (config.beta * _ratio(policy, reference, "chosen", config),
            config.beta * _ratio(policy, reference, "rejected", config))


def dpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """Sigmoid DPO, -logsig(h) (TRL's `sigmoid`), with optional label smoothing: conservative DPO
    (TRL's `sigmoid` ignores label_smoothing; its conservative form is `aot` on single pairs)."""
    return _per_row(_sigmoid(_margin(policy, reference, "chosen", "rejected", config), config),
                    policy, reference, config)


def robust(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """Robust DPO (Chowdhury et al. 2024, TRL's `loss_type="robust"`), eps = label_smoothing:
    (-(1-eps) logsig(h) + eps logsig(-h)) / (1 - 2 eps). Unlike cDPO's -(1-eps) logsig(h)
    - eps logsig(-h), its flipped term enters with a plus sign: an unbiased estimate of the
    clean-label loss when labels flip with probability eps, not a smoothed target."""
    h = _margin(policy, reference, "chosen", "rejected", config)
    eps = config.label_smoothing
    return _per_row((-(1 - eps) * jax.nn.log_sigmoid(h) + eps * jax.nn.log_sigmoid(-h)) / (1 - 2 * eps),
                    policy, reference, config)


def ipo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """(h - 1/(2 beta))^2 with length-normalised log-ratios (IPO always normalises).
    Rewards are logged as beta * D(y) on raw sums (docs/methods.md section 1, and TRL's IPO logs)."""
    normalized = dataclasses.replace(config, length_normalize=True)
    h = _ratio(policy, reference, "chosen", normalized) - _ratio(policy, reference, "rejected", normalized)
    return _per_row(jnp.square(h - 1 / (2 * config.beta)), policy, reference, config)


def sigmoid_norm(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """-logsig(beta * h) on length-normalised log-ratios (TRL's `sigmoid_norm`)."""
    normalized = dataclasses.replace(config, length_normalize=True)
    return _per_row(-jax.nn.log_sigmoid(_margin(policy, reference, "chosen", "rejected", normalized)),
                    policy, reference, config)


def hinge(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """relu(1 - beta * h) (SLiC)."""
    return _per_row(jax.nn.relu(1 - _margin(policy, reference, "chosen", "rejected", config)),
                    policy, reference, config)


def exo_pair(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """EXO-pref (Ji et al. 2024, Eq. 16; TRL's `exo_pair`): KL(q || p) with q = softmax of the two
    rewards and p = (1-eps, eps), eps = label_smoothing (> 0)."""
    h = _margin(policy, reference, "chosen", "rejected", config)
    eps = config.label_smoothing
    per_row = (jax.nn.sigmoid(h) * (jax.nn.log_sigmoid(h) - math.log1p(-eps))
               + jax.nn.sigmoid(-h) * (jax.nn.log_sigmoid(-h) - math.log(eps)))
    return _per_row(per_row, policy, reference, config)


def nca_pair(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """NCA (Chen et al. 2024; TRL's `nca_pair`): -logsig(r_w) - logsig(-r_w)/2 - logsig(-r_l)/2."""
    r_w, r_l = _log_ratios(policy, reference, config)
    per_row = -jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w) - 0.5 * jax.nn.log_sigmoid(-r_l)
    return _per_row(per_row, policy, reference, config)


def bco_pair(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """BCO on pairs as TRL's `bco_pair` computes it: -logsig(r_w) - logsig(-r_l), with no running
    reward shift (the BCO paper's delta)."""
    r_w, r_l = _log_ratios(policy, reference, config)
    return _per_row(-jax.nn.log_sigmoid(r_w) - jax.nn.log_sigmoid(-r_l), policy, reference, config)


def sppo_hard(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """SPPO with hard win probabilities (TRL's `sppo_hard`): (D_w - 1/(2 beta))^2 + (D_l + 1/(2 beta))^2."""
    d_w, d_l = (_ratio(policy, reference, kind, config) for kind in ("chosen", "rejected"))
    per_row = jnp.square(d_w - 0.5 / config.beta) + jnp.square(d_l + 0.5 / config.beta)
    return _per_row(per_row, policy, reference, config)


def aot(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """AOT (Melnyk et al. 2024; TRL's `aot`): the policy's and the reference's log-prob gaps
    lp_w - lp_l, each sorted over the batch, then the (smoothed) sigmoid of their difference. The
    batch is the micro-batch over all devices (TRL sorts each process's batch)."""
    gaps = [jnp.sort(rows["chosen"] - rows["rejected"]) for rows in (policy, reference)]
    return _per_row(_sigmoid(config.beta * (gaps[0] - gaps[1]), config), policy, reference, config)


def aot_unpaired(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """AOT for unpaired data (TRL's `aot_unpaired`): D(y_w) and D(y_l) sorted apart over the batch."""
    d_w, d_l = (jnp.sort(policy[kind] - reference[kind]) for kind in ("chosen", "rejected"))
    return _per_row(_sigmoid(config.beta * (d_w - d_l), config), policy, reference, config)


def apo_zero(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7; TRL's `apo_zero`): 1 - sig(r_w) + sig(r_l),
    for chosen answers better than the model's own."""
    r_w, r_l = _log_ratios(policy, reference, config)
    return _per_row(1 - jax.nn.sigmoid(r_w) + jax.nn.sigmoid(r_l), policy, reference, config)


def apo_down(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """APO-down (Eq. 8; TRL's `apo_down`): sig(r_w) + 1 - sig(r_w - r_l), for chosen answers worse
    than the model's own."""
    r_w, r_l = _log_ratios(policy, reference, config)
    return _per_row(jax.nn.sigmoid(r_w) + 1 - jax.nn.sigmoid(r_w - r_l), policy, reference, config)


def discopop(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """DiscoPOP (Chris Lu et al. 2024, Eq. 5; TRL's `discopop`): the logistic and exponential
    losses of h blended by sig(h / tau), tau = loss.discopop_tau."""
    h = _margin(policy, reference, "chosen", "rejected", config)
    blend = jax.nn.sigmoid(h / config.discopop_tau)
    return _per_row(-jax.nn.log_sigmoid(h) * (1 - blend) + jnp.exp(-h) * blend, policy, reference, config)


def sft(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """NLL(y_w) as a term of a sum (`sigmoid+sft`; TRL's `sft` with loss.sft_normalize=token)."""
    nll = sft_nll(policy, config)
    return nll, {"nll/chosen": nll, "logps/chosen": jnp.mean(policy["chosen"])}


def _mean_logps(policy: Rows) -> tuple[jax.Array, jax.Array]:
    """Each answer's log-prob divided by its token count (SimPO's and ORPO's sequence score)."""
    return tuple(policy[kind] / jnp.maximum(policy[f"length_{kind}"], 1) for kind in ("chosen", "rejected"))


def _policy_reward_metrics(chosen: jax.Array, rejected: jax.Array, config: LossConfig) -> Metrics:
    """TRL's CPO/ORPO metrics: rewards are beta times the policy's own sequence scores."""
    r_w, r_l = config.beta * chosen, config.beta * rejected
    return {"rewards/chosen": jnp.mean(r_w), "rewards/rejected": jnp.mean(r_l),
            "rewards/margins": jnp.mean(r_w - r_l), "rewards/accuracies": jnp.mean((r_w > r_l).astype(jnp.float32)),
            "logps/chosen": jnp.mean(chosen), "logps/rejected": jnp.mean(rejected)}


def simpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """SimPO (Meng et al. 2024; TRL's CPO with loss_type="simpo"), no reference:
    -logsig(beta * (lp_w/|y_w| - lp_l/|y_l|) - gamma), gamma = loss.simpo_gamma, smoothed by
    label_smoothing as TRL does. CPO-SimPO adds loss.sft_weight with sft_normalize=token."""
    chosen, rejected = _mean_logps(policy)
    h = config.beta * (chosen - rejected) - config.simpo_gamma
    return _sigmoid(h, config), _policy_reward_metrics(chosen, rejected, config)


def cpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """CPO's preference term (Xu et al. 2024; TRL's CPO, loss_type="sigmoid"), no reference:
    -logsig(beta * (lp_w - lp_l)) on summed log-probs. TRL's CPO adds its NLL term (cpo_alpha=1):
    here loss.sft_weight=1 with sft_normalize=token."""
    chosen, rejected = policy["chosen"], policy["rejected"]
    return _sigmoid(config.beta * (chosen - rejected), config), _policy_reward_metrics(chosen, rejected, config)


def _log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, branching at -ln 2 to avoid cancellation. x is kept below
    -1e-6 so an answer predicted with certainty gives a large finite value, not -inf."""
    x = jnp.minimum(x, -1e-6)
    return jnp.where(x < -math.log(2), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def orpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """ORPO (Hong et al. 2024, Eqs. 4-7; TRL's ORPOTrainer), no reference:
    NLL(y_w) - beta * logsig(log odds(y_w) - log odds(y_l)), odds(y) = P / (1 - P) with P the
    per-token mean probability exp(lp/|y|); beta is the paper's lambda. The NLL follows
    loss.sft_normalize (TRL's: token)."""
    chosen, rejected = _mean_logps(policy)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    ratio = jax.nn.log_sigmoid(log_odds)
    nll = sft_nll(policy, config)
    metrics = _policy_reward_metrics(chosen, rejected, config)
    metrics.update({"nll_loss": nll, "log_odds_ratio": jnp.mean(ratio), "log_odds_chosen": jnp.mean(log_odds)})
    return nll - config.beta * ratio, metrics


def dpo_combined(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """The BDHS paper's combination of an external and a self-generated rejected answer
    (arXiv 2407.02477): g * L_dpo(y_w, y_l) + (1 - g) * L_dpo(y_w, y~), y~ = rejected_sampled,
    g = loss.combined_weight (0.5). Metrics of the second pair under `sampled/`."""
    h_external, h_sampled, metrics = _two_terms(policy, reference, config, "rejected_sampled", "sampled/")
    g = config.combined_weight
    return g * _sigmoid(h_external, config) + (1 - g) * _sigmoid(h_sampled, config), metrics


def rdpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """Re-Align Eq. 1: -logsig(h_txt) - w_v * logsig(h_vis), h_vis contrasting y_w under v and v_l."""
    h_txt, h_vis, metrics = _two_terms(policy, reference, config, "chosen_alt_image", "visual/")
    return _sigmoid(h_txt, config) + config.visual_weight * _sigmoid(h_vis, config), metrics


def mdpo(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """DPO + conditional term on the corrupted image + anchor -logsig(beta*D(y_w) - delta)."""
    h_txt, h_vis, metrics = _two_terms(policy, reference, config, "chosen_alt_image", "visual/")
    anchor = config.beta * _ratio(policy, reference, "chosen", config) - config.mdpo_anchor_delta
    return _sigmoid(h_txt, config) + _sigmoid(h_vis, config) - jax.nn.log_sigmoid(anchor), metrics


def povid(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """POVID stage 2 as the public scripts: mean of the injected-text and noisy-image DPO terms."""
    h_inj, h_noisy, metrics = _two_terms(policy, reference, config, "rejected_noisy", "noisy/")
    return 0.5 * _sigmoid(h_inj, config) + 0.5 * _sigmoid(h_noisy, config), metrics


def povid_weighted(policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """POVID as the paper writes it: -logsig(beta * [a*D_w - (b1*D_inj + b2*D_noisy)])."""
    a, b1, b2 = config.povid_weights
    d = {k: _ratio(policy, reference, k, config) for k in ("chosen", "rejected", "rejected_noisy")}
    h = config.beta * (a * d["chosen"] - (b1 * d["rejected"] + b2 * d["rejected_noisy"]))
    *_, metrics = _two_terms(policy, reference, config, "rejected_noisy", "noisy/")
    return _sigmoid(h, config), metrics


LossTerm = Callable[[Rows, Rows, LossConfig], tuple[jax.Array, Metrics]]  # per-row loss [B] (or scalar), metrics
LossFn = Callable[[Rows, Rows, LossConfig], tuple[jax.Array, Metrics]]  # the total loss (scalar), metrics


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function, the rows it reads in the order a batch stacks them, and
    whether it reads the reference's log-probs at all (SimPO, ORPO and CPO do not: their step
    runs no reference forward)."""

    fn: LossFn
    rows: tuple[str, ...]
    needs_reference: bool = True
    terms: tuple[str, ...] = ()


_PAIR = ("chosen", "rejected")
# name: (per-row term, rows read, reads the reference)
TERMS: dict[str, tuple[LossTerm, tuple[str, ...], bool]] = {
    "dpo": (dpo, _PAIR, True), "sigmoid": (dpo, _PAIR, True), "robust": (robust, _PAIR, True),
    "ipo": (ipo, _PAIR, True), "hinge": (hinge, _PAIR, True), "exo_pair": (exo_pair, _PAIR, True),
    "nca_pair": (nca_pair, _PAIR, True), "bco_pair": (bco_pair, _PAIR, True), "sppo_hard": (sppo_hard, _PAIR, True),
    "aot": (aot, _PAIR, True), "aot_unpaired": (aot_unpaired, _PAIR, True), "apo_zero": (apo_zero, _PAIR, True),
    "apo_down": (apo_down, _PAIR, True), "discopop": (discopop, _PAIR, True),
    "sigmoid_norm": (sigmoid_norm, _PAIR, True), "sft": (sft, ("chosen",), False),
    "simpo": (simpo, _PAIR, False), "cpo": (cpo, _PAIR, False), "orpo": (orpo, _PAIR, False),
    "rdpo": (rdpo, (*_PAIR, "chosen_alt_image"), True), "mdpo": (mdpo, (*_PAIR, "chosen_alt_image"), True),
    "povid": (povid, (*_PAIR, "rejected_noisy"), True),
    "povid_weighted": (povid_weighted, (*_PAIR, "rejected_noisy"), True),
    "dpo_combined": (dpo_combined, (*_PAIR, "rejected_sampled"), True),
}
ROW_ORDER = ("chosen", "rejected", "chosen_alt_image", "rejected_noisy", "rejected_sampled")


def wpo_weights(policy: Rows) -> jax.Array:
    """WPO's pair weights (Zhou et al. 2024, arXiv 2406.11827, Eq. 2, as TRL 1.16 computes them):
    w(y_w) * w(y_l), w(y) = exp(mean over y's tokens of log p(y_t) - log sum_v p(v)^2), the
    policy's own probability of the pair made comparable across contexts (row_logps' `wpo_<kind>`
    holds the mean; it carries no gradient)."""
    return jnp.exp(policy["wpo_chosen"] + policy["wpo_rejected"])


def _total(names: tuple[str, ...], policy: Rows, reference: Rows, config: LossConfig) -> tuple[jax.Array, Metrics]:
    """sum_i w_i * mean(term_i) (+ alpha * NLL(y_w) when loss.sft_weight is set); under loss.wpo
    each term's per-pair values are weighted by `wpo_weights` first (TRL weights every loss type,
    its SFT term included). The metrics are the first term's (TRL logs one set of rewards however
    many loss types it sums), plus each term's value as `loss/<name>` when there are several."""
    weights = config.weights or (1.0,) * len(names)
    pair_weights = wpo_weights(policy) if config.wpo else 1.0
    loss, metrics = jnp.zeros((), jnp.float32), {}
    for name, weight in zip(names, weights, strict=True):
        per_row, term_metrics = TERMS[name][0](policy, reference, config)
        value = jnp.mean(per_row * pair_weights)
        loss = loss + weight * value
        metrics = {**term_metrics, **metrics}
        if len(names) > 1:
            metrics[f"loss/{name}"] = value
    if config.sft_weight:
        nll = sft_nll(policy, config)
        loss = loss + config.sft_weight * jnp.mean(nll * pair_weights)
        metrics["nll/chosen"] = nll
    if config.wpo:
        metrics["wpo/weight"] = jnp.mean(pair_weights)
    metrics["loss"] = loss
    return loss, metrics


@functools.cache
def loss_spec(name: str) -> LossSpec:
    """The spec of one registered loss or of a `+`-joined sum of them (`sigmoid+bco_pair+sft`,
    weighted by loss.weights: MPO)."""
    names = tuple(name.split("+"))
    unknown = [n for n in names if n not in TERMS]
    if unknown or not name:
        which = "" if names == tuple(unknown) else f": {', '.join(map(repr, unknown))}"
        raise ValueError(f"loss.name={name!r}{which} is unknown; choose one of {sorted(TERMS)}, or several joined "
                         "by '+' (weighted by loss.weights)")
    if len(set(names)) < len(names):
        raise ValueError(f"loss.name={name!r} names a loss twice; weight it with loss.weights instead")
    read = {row for n in names for row in TERMS[n][1]}
    rows = tuple(row for row in ROW_ORDER if row in read)
    needs_reference = any(TERMS[n][2] for n in names)
    return LossSpec(functools.partial(_total, names), rows, needs_reference, names)


def get_loss(name: str) -> LossFn:
    return loss_spec(name).fn
