"""Our DPO-family losses equal TRL's DPOTrainer loss on the same sequence log-probs.

TRL 1.x has no standalone `dpo_loss(chosen_logps, ...)` any more: the loss is computed inline in
`DPOTrainer._compute_loss(model, inputs, return_outputs)` (trl/trainer/dpo_trainer.py), which runs
the policy model, sums its per-token log-probs over the sequence, and reads the reference log-probs
from the batch when `precompute_ref_logps` is set. We call that real method on an instance made with
`DPOTrainer.__new__(DPOTrainer)` (no __init__: no model, tokenizer, dataset or Trainer setup), with
only the attributes `_compute_loss` reads set by hand, and a stub "model" whose forward returns the
fused-LM-head outputs TRL expects (`log_probs` per token, plus `entropy`, `mean_logits`, `is_top1`
used only for logging). The stub puts each row's summed log-prob on a single completion position
and zeros elsewhere, so TRL's `per_token_logps.sum(dim=1)` gives back exactly the float32 numbers
our loss sees. The formulas themselves are all TRL's; nothing of it is reimplemented here.
"""

import os
import types
from collections import defaultdict

import numpy as np
import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental
trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
torch = pytest.importorskip("torch")

from realign_jax.objectives.losses import LossConfig, get_loss  # noqa: E402

N = 8
PROMPT_LEN = 3
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
TOL = dict(rtol=1e-5, atol=1e-5)


def _batch(seed):
    rng = np.random.default_rng(seed)
    logps = {f"{who}_{kind}": rng.normal(-40, 8, N).astype(np.float32)
             for who in ("policy", "ref") for kind in ("chosen", "rejected")}
    lengths = {kind: rng.integers(5, 40, N).astype(np.float32) for kind in ("chosen", "rejected")}
    return logps, lengths


class _StubPolicy(torch.nn.Module):
    """Stands in for the policy model: returns the fused-LM-head outputs of `_compute_loss`."""

    def __init__(self, seq_logps, completion_mask, log_sum_sq=None):
        super().__init__()
        self.seq_logps = seq_logps  # [2N], chosen rows then rejected rows
        self.completion_mask = completion_mask  # [2N, L]
        self.log_sum_sq = log_sum_sq  # [2N, L - 1]: WPO's per-token log sum_v p(v)^2, when weighting

    def forward(self, input_ids, labels, fused_lm_head, **kwargs):
        assert fused_lm_head and torch.equal(labels != -100, self.completion_mask.bool())
        shift_mask = self.completion_mask[:, 1:]
        per_token = torch.zeros(shift_mask.shape, dtype=torch.float32)
        last = shift_mask.shape[1] - 1 - torch.argmax(shift_mask.flip(1), dim=1)  # last completion position
        per_token[torch.arange(len(last)), last] = self.seq_logps
        zeros = torch.zeros_like(per_token)
        return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                     is_top1=torch.zeros(per_token.shape, dtype=torch.bool),
                                     log_sum_sq_probs=self.log_sum_sq)


def trl_loss(logps, lengths, beta, loss_type, label_smoothing=0.0, sft_weight=0.0, weights=None,
             discopop_tau=0.05, log_sum_sq=None):
    """TRL's DPOTrainer._compute_loss on these log-probs: (loss, logged eval metrics); with
    `sft_weight`, `loss_type=[loss_type, "sft"]` weighted [1, sft_weight] (TRL's RPO term). A
    `+`-joined loss_type is TRL's list of loss types, weighted by `weights` (MPO). `log_sum_sq`
    ([2N, L-1] per-token log sum_v p(v)^2 of the shifted rows) turns on WPO's `use_weighting`."""
    length = np.concatenate([lengths["chosen"], lengths["rejected"]]).astype(int)
    seq_len = PROMPT_LEN + int(length.max()) + 1
    positions = np.arange(seq_len)
    completion_mask = torch.tensor((positions >= PROMPT_LEN) & (positions < PROMPT_LEN + length[:, None]),
                                   dtype=torch.long)
    model = _StubPolicy(torch.tensor(np.concatenate([logps["policy_chosen"], logps["policy_rejected"]])),
                        completion_mask, None if log_sum_sq is None else torch.tensor(log_sum_sq)).eval()

    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    # Attributes `_compute_loss` reads (set in DPOTrainer.__init__ from DPOConfig), nothing more:
    trainer.model = model  # only for `.training` -> metric mode "eval"
    trainer.accelerator = types.SimpleNamespace(  # single process: gather is the identity
        device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    loss_types = loss_type.split("+")
    trainer.loss_types = loss_types + ["sft"] if sft_weight else loss_types
    trainer.loss_weights = list(weights or [1.0] * len(loss_types)) + ([sft_weight] if sft_weight else [])
    trainer.args = types.SimpleNamespace(discopop_tau=discopop_tau)  # read by "discopop" only
    trainer.f_divergence_type = "reverse_kl"  # standard DPO
    trainer.ld_alpha = None  # no LD-DPO length desensitisation
    trainer.use_weighting = log_sum_sq is not None  # WPO weighting
    trainer.aux_loss_enabled = False
    trainer.precompute_ref_logps = True  # reference log-probs come from the batch
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0

    inputs = {
        "input_ids": torch.ones_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": torch.tensor(logps["ref_chosen"]),
        "ref_rejected_logps": torch.tensor(logps["ref_rejected"]),
    }
    with torch.no_grad():
        loss = trainer._compute_loss(model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    return float(loss), metrics


def our_loss(name, logps, lengths, beta, label_smoothing=0.0, wpo_rows=None, **options):
    policy = {"chosen": logps["policy_chosen"], "rejected": logps["policy_rejected"],
              "length_chosen": lengths["chosen"], "length_rejected": lengths["rejected"],
              "nll_chosen": -logps["policy_chosen"] / lengths["chosen"], **(wpo_rows or {})}
    reference = {"chosen": logps["ref_chosen"], "rejected": logps["ref_rejected"]}
    loss, metrics = get_loss(name)(policy, reference, LossConfig(beta=beta, label_smoothing=label_smoothing, **options))
    return float(loss), {k: float(v) for k, v in metrics.items()}


def _assert_metrics_match(ours, theirs):
    for key in REWARD_METRICS + ("logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(ours[key], theirs[key], **TOL, err_msg=key)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("name,loss_type", [("dpo", "sigmoid"), ("hinge", "hinge")])
def test_loss_and_rewards_match_trl(name, loss_type, beta, seed):
    logps, lengths = _batch(seed)
    ours, our_metrics = our_loss(name, logps, lengths, beta)
    theirs, their_metrics = trl_loss(logps, lengths, beta, loss_type)
    np.testing.assert_allclose(ours, theirs, **TOL)
    _assert_metrics_match(our_metrics, their_metrics)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_label_smoothed_dpo_matches_trl(beta, seed):
    """Conservative DPO, -(1-e) logsig(beta h) - e logsig(-beta h).

    TRL 1.x's "sigmoid" ignores `label_smoothing` (it is read only by "robust", "exo_pair" and the
    AOT losses), and "robust" is a different, unbiased estimator. The only TRL expression of the
    conservative form is the AOT loss: "aot" sorts the policy and reference log-ratio differences
    across the batch before applying it, which for a batch of ONE pair is the identity. So TRL's
    per-pair conservative loss is "aot" on each pair alone, and the batch loss is their mean."""
    eps = 0.1
    logps, lengths = _batch(seed)
    ours, our_metrics = our_loss("dpo", logps, lengths, beta, label_smoothing=eps)
    per_pair = [trl_loss({k: v[i:i + 1] for k, v in logps.items()}, {k: v[i:i + 1] for k, v in lengths.items()},
                         beta, "aot", label_smoothing=eps)[0] for i in range(N)]
    np.testing.assert_allclose(ours, np.mean(per_pair), **TOL)
    # Reward metrics do not depend on the loss type; take them from the whole batch.
    _assert_metrics_match(our_metrics, trl_loss(logps, lengths, beta, "aot", label_smoothing=eps)[1])
    # And the smoothing is not a no-op: it moves the loss away from plain sigmoid DPO.
    assert abs(ours - our_loss("dpo", logps, lengths, beta)[0]) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_loss_matches_trl(beta, seed):
    """TRL's "ipo" divides each log-ratio by its completion length (completion_mask.sum, clamped at 1),
    as ours does from `length_<kind>`. Rewards are logged as beta * raw log-ratio by both."""
    logps, lengths = _batch(seed)
    ours, our_metrics = our_loss("ipo", logps, lengths, beta)
    theirs, their_metrics = trl_loss(logps, lengths, beta, "ipo")
    np.testing.assert_allclose(ours, theirs, **TOL)
    _assert_metrics_match(our_metrics, their_metrics)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_robust_matches_trl(eps, seed):
    """loss.name=robust is TRL's "robust" (Chowdhury et al. 2024) at label_smoothing = eps."""
    logps, lengths = _batch(seed)
    ours, our_metrics = our_loss("robust", logps, lengths, 0.1, label_smoothing=eps)
    theirs, their_metrics = trl_loss(logps, lengths, 0.1, "robust", label_smoothing=eps)
    np.testing.assert_allclose(ours, theirs, **TOL)
    _assert_metrics_match(our_metrics, their_metrics)
    if eps:  # and it is not conservative DPO
        assert abs(ours - our_loss("dpo", logps, lengths, 0.1, label_smoothing=eps)[0]) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_token_mean_sft_term_matches_trl(seed):
    """loss.sft_normalize=token is TRL's "sft" term (all chosen tokens of the batch averaged);
    the default per-example mean is not, when the answers' lengths differ."""
    logps, lengths = _batch(seed)
    theirs, _ = trl_loss(logps, lengths, 0.1, "sigmoid", sft_weight=0.5)
    ours, _ = our_loss("dpo", logps, lengths, 0.1, sft_weight=0.5, sft_normalize="token")
    np.testing.assert_allclose(ours, theirs, **TOL)
    example, _ = our_loss("dpo", logps, lengths, 0.1, sft_weight=0.5)
    assert abs(example - theirs) > 1e-3


# Every TRL 1.16 DPO loss type by its own name (the ones above have tests of their own details).
TRL_TYPES = ["sigmoid", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
             "apo_down", "discopop", "sigmoid_norm"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("loss_type", TRL_TYPES)
def test_each_trl_loss_type_matches_trl_by_name(loss_type, beta, seed):
    """loss.name=<TRL loss_type> gives TRL's loss and reward metrics. exo_pair and the AOT pair use
    label_smoothing (TRL's EXO default 1e-3; AOT at 0.1 so the smoothing is exercised); discopop uses
    TRL's default tau 0.05."""
    eps = {"exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.1}.get(loss_type, 0.0)
    logps, lengths = _batch(seed)
    ours, our_metrics = our_loss(loss_type, logps, lengths, beta, label_smoothing=eps)
    theirs, their_metrics = trl_loss(logps, lengths, beta, loss_type, label_smoothing=eps)
    np.testing.assert_allclose(ours, theirs, **TOL)
    _assert_metrics_match(our_metrics, their_metrics)


def test_discopop_tau_is_the_key_trl_reads():
    logps, lengths = _batch(2)
    ours, _ = our_loss("discopop", logps, lengths, 0.5, discopop_tau=0.3)
    theirs, _ = trl_loss(logps, lengths, 0.5, "discopop", discopop_tau=0.3)
    np.testing.assert_allclose(ours, theirs, **TOL)
    assert abs(ours - our_loss("discopop", logps, lengths, 0.5)[0]) > 1e-4  # tau is not ignored


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,weights", [("sigmoid+bco_pair+sft", (0.8, 0.2, 1.0)),  # MPO's recipe
                                          ("sigmoid+bco_pair+sft", ()), ("ipo+apo_zero", (0.5, 2.0))])
def test_weighted_sums_of_losses_match_trl(name, weights, seed):
    """`loss.name=a+b+c` with `loss.weights` is TRL's loss_type=[a, b, c], loss_weights=[...].
    TRL's "sft" is the token mean over the batch's chosen answers: loss.sft_normalize=token."""
    logps, lengths = _batch(seed)
    ours, our_metrics = our_loss(name, logps, lengths, 0.1, weights=weights, sft_normalize="token")
    theirs, their_metrics = trl_loss(logps, lengths, 0.1, name, weights=weights)
    np.testing.assert_allclose(ours, theirs, **TOL)
    _assert_metrics_match(our_metrics, their_metrics)


def _trl_experimental(module, cls, **attrs):
    """A TRL experimental trainer made with __new__, only the attributes its loss method reads set."""
    trainer_cls = getattr(pytest.importorskip(module), cls)
    trainer = trainer_cls.__new__(trainer_cls)
    trainer.accelerator = types.SimpleNamespace(device=torch.device("cpu"))
    for name, value in attrs.items():
        setattr(trainer, name, value)
    return trainer


def _policy_means(logps, lengths):
    """The per-token mean log-probs TRL's CPO (simpo) and ORPO trainers score with."""
    return (torch.tensor(logps["policy_chosen"] / lengths["chosen"]),
            torch.tensor(logps["policy_rejected"] / lengths["rejected"]))


def _reward_metrics(beta, chosen, rejected):
    r_w, r_l = beta * chosen.numpy(), beta * rejected.numpy()
    return {"rewards/chosen": r_w.mean(), "rewards/rejected": r_l.mean(), "rewards/margins": (r_w - r_l).mean(),
            "rewards/accuracies": (r_w > r_l).mean(), "logps/chosen": chosen.numpy().mean(),
            "logps/rejected": rejected.numpy().mean()}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta,gamma,eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (2.0, 0.5, 0.1)])
def test_simpo_matches_trl_cpo_trainer(beta, gamma, eps, seed):
    """loss.name=simpo is TRL's CPOTrainer.cpo_loss with loss_type="simpo" and cpo_alpha=0 on the
    length-averaged log-probs (SimPO's recipe beta 2-2.5, gamma 0.5-1.4); with loss.sft_weight=1
    (token mean) it is CPO-SimPO, whose NLL term TRL adds as cpo_alpha * nll."""
    logps, lengths = _batch(seed)
    trainer = _trl_experimental("trl.experimental.cpo.cpo_trainer", "CPOTrainer", alpha=0.0, beta=beta,
                                simpo_gamma=gamma, label_smoothing=eps, loss_type="simpo")
    chosen, rejected = _policy_means(logps, lengths)
    losses, _, _ = trainer.cpo_loss(chosen, rejected)
    ours, our_metrics = our_loss("simpo", logps, lengths, beta, label_smoothing=eps, simpo_gamma=gamma)
    np.testing.assert_allclose(ours, float(losses.mean()), **TOL)
    _assert_metrics_match(our_metrics, _reward_metrics(beta, chosen, rejected))
    nll = -(logps["policy_chosen"].sum() / lengths["chosen"].sum())  # TRL's token-mean cross-entropy
    with_sft, _ = our_loss("simpo", logps, lengths, beta, label_smoothing=eps, simpo_gamma=gamma, sft_weight=1.0,
                           sft_normalize="token")
    np.testing.assert_allclose(with_sft, float(losses.mean()) + nll, **TOL)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_cpo_matches_trl_cpo_trainer(beta, seed):
    """loss.name=cpo is TRL's CPOTrainer.cpo_loss with loss_type="sigmoid" on summed log-probs."""
    logps, lengths = _batch(seed)
    trainer = _trl_experimental("trl.experimental.cpo.cpo_trainer", "CPOTrainer", alpha=0.0, beta=beta,
                                simpo_gamma=0.5, label_smoothing=0.0, loss_type="sigmoid")
    chosen, rejected = torch.tensor(logps["policy_chosen"]), torch.tensor(logps["policy_rejected"])
    losses, _, _ = trainer.cpo_loss(chosen, rejected)
    ours, our_metrics = our_loss("cpo", logps, lengths, beta)
    np.testing.assert_allclose(ours, float(losses.mean()), **TOL)
    _assert_metrics_match(our_metrics, _reward_metrics(beta, chosen, rejected))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_matches_trl_orpo_trainer(beta, seed):
    """loss.name=orpo is TRL's ORPOTrainer loss: token-mean NLL of the chosen answers minus the mean
    of odds_ratio_loss (beta * logsig(log odds ratio)) on length-averaged log-probs; its logged
    log_odds_ratio and log_odds_chosen too. Rows near certainty (mean log-prob ~ -0.01) exercise
    log(1 - p)."""
    logps, lengths = _batch(seed)
    logps["policy_chosen"][:2] = -0.01 * lengths["chosen"][:2]
    trainer = _trl_experimental("trl.experimental.orpo.orpo_trainer", "ORPOTrainer", beta=beta)
    chosen, rejected = _policy_means(logps, lengths)
    losses, _, _, ratio, log_odds = trainer.odds_ratio_loss(chosen, rejected)
    nll = -(logps["policy_chosen"].sum() / lengths["chosen"].sum())
    ours, our_metrics = our_loss("orpo", logps, lengths, beta, sft_normalize="token")
    np.testing.assert_allclose(ours, nll - float(losses.mean()), **TOL)
    _assert_metrics_match(our_metrics, _reward_metrics(beta, chosen, rejected))
    np.testing.assert_allclose(our_metrics["log_odds_ratio"], float(ratio), **TOL)
    np.testing.assert_allclose(our_metrics["log_odds_chosen"], float(log_odds), **TOL)
    np.testing.assert_allclose(our_metrics["nll_loss"], nll, **TOL)


def _wpo_inputs(logps, lengths, seed):
    """Per-token log sum_v p(v)^2 for TRL's stub, over the completion positions of its shifted
    rows, and our rows' WPO means from the same numbers: (seq log-prob - its sum) / length."""
    length = np.concatenate([lengths["chosen"], lengths["rejected"]]).astype(int)
    seq_len = PROMPT_LEN + int(length.max()) + 1
    log_sum_sq = np.random.default_rng(seed + 10).uniform(-3.0, -0.5, (2 * N, seq_len - 1)).astype(np.float32)
    positions = np.arange(1, seq_len)  # the shifted mask: completion_mask[:, 1:]
    mask = (positions >= PROMPT_LEN) & (positions < PROMPT_LEN + length[:, None])
    sums = (log_sum_sq * mask).sum(-1)
    seq = np.concatenate([logps["policy_chosen"], logps["policy_rejected"]])
    means = (seq - sums) / mask.sum(-1)
    return log_sum_sq, {"wpo_chosen": means[:N].astype(np.float32), "wpo_rejected": means[N:].astype(np.float32)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss_type,weights", [("sigmoid", None), ("ipo", None),
                                               ("sigmoid+bco_pair", (0.8, 0.2))])
def test_wpo_weighting_matches_trl(loss_type, weights, seed):
    """loss.wpo is TRL's use_weighting (WPO, arXiv 2406.11827): each loss type's per-pair values
    times exp(mean aligned log-prob of y_w) * exp(that of y_l). (TRL 1.16 cannot weight its "sft"
    loss type: the in-place product on its expanded scalar raises, so sums with sft are checked
    against numpy only, tests/test_losses.py.)"""
    logps, lengths = _batch(seed)
    log_sum_sq, wpo_rows = _wpo_inputs(logps, lengths, seed)
    theirs, _ = trl_loss(logps, lengths, 0.1, loss_type, weights=weights, log_sum_sq=log_sum_sq)
    name = {"sigmoid": "dpo"}.get(loss_type, loss_type)
    options = dict(weights=weights) if weights else {}
    ours, _ = our_loss(name, logps, lengths, 0.1, wpo=True, wpo_rows=wpo_rows, **options)
    np.testing.assert_allclose(ours, theirs, **TOL)
    plain, _ = our_loss(name, logps, lengths, 0.1, **options)
    assert abs(plain - theirs) > 1e-3  # the weights move the loss
