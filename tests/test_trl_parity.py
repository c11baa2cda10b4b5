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

import types
from collections import defaultdict

import numpy as np
import pytest

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

    def __init__(self, seq_logps, completion_mask):
        super().__init__()
        self.seq_logps = seq_logps  # [2N], chosen rows then rejected rows
        self.completion_mask = completion_mask  # [2N, L]

    def forward(self, input_ids, labels, fused_lm_head, **kwargs):
        assert fused_lm_head and torch.equal(labels != -100, self.completion_mask.bool())
        shift_mask = self.completion_mask[:, 1:]
        per_token = torch.zeros(shift_mask.shape, dtype=torch.float32)
        last = shift_mask.shape[1] - 1 - torch.argmax(shift_mask.flip(1), dim=1)  # last completion position
        per_token[torch.arange(len(last)), last] = self.seq_logps
        zeros = torch.zeros_like(per_token)
        return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                     is_top1=torch.zeros(per_token.shape, dtype=torch.bool))


def trl_loss(logps, lengths, beta, loss_type, label_smoothing=0.0, sft_weight=0.0):
    """TRL's DPOTrainer._compute_loss on these log-probs: (loss, logged eval metrics); with
    `sft_weight`, `loss_type=[loss_type, "sft"]` weighted [1, sft_weight] (TRL's RPO term)."""
    length = np.concatenate([lengths["chosen"], lengths["rejected"]]).astype(int)
    seq_len = PROMPT_LEN + int(length.max()) + 1
    positions = np.arange(seq_len)
    completion_mask = torch.tensor((positions >= PROMPT_LEN) & (positions < PROMPT_LEN + length[:, None]),
                                   dtype=torch.long)
    model = _StubPolicy(torch.tensor(np.concatenate([logps["policy_chosen"], logps["policy_rejected"]])),
                        completion_mask).eval()

    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    # Attributes `_compute_loss` reads (set in DPOTrainer.__init__ from DPOConfig), nothing more:
    trainer.model = model  # only for `.training` -> metric mode "eval"
    trainer.accelerator = types.SimpleNamespace(  # single process: gather is the identity
        device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    trainer.loss_types = [loss_type, "sft"] if sft_weight else [loss_type]
    trainer.loss_weights = [1.0, sft_weight] if sft_weight else [1.0]
    trainer.f_divergence_type = "reverse_kl"  # standard DPO
    trainer.ld_alpha = None  # no LD-DPO length desensitisation
    trainer.use_weighting = False  # no WPO weighting
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


def our_loss(name, logps, lengths, beta, label_smoothing=0.0, **options):
    policy = {"chosen": logps["policy_chosen"], "rejected": logps["policy_rejected"],
              "length_chosen": lengths["chosen"], "length_rejected": lengths["rejected"],
              "nll_chosen": -logps["policy_chosen"] / lengths["chosen"]}
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
