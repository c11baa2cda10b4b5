"""Each loss equals a plain-numpy transcription of its docs/methods.md formula, in value and gradient."""

import dataclasses

import jax
import numpy as np
import pytest

from realign_jax.objectives.losses import TERMS, LossConfig, get_loss, loss_spec

KINDS = ("chosen", "rejected", "chosen_alt_image", "rejected_noisy", "rejected_sampled")
RNG = np.random.default_rng(0)
N = 6


def logsig(x):
    return -np.logaddexp(0.0, -x)


def reference_numpy(name, p, r, lengths, nll, cfg):
    """docs/methods.md sections 1-5, written out independently of the implementation."""
    def d(k, normalize=cfg.length_normalize):
        x = p[k] - r[k]
        return x / lengths[k] if normalize else x

    def sig(h):
        e = cfg.label_smoothing
        return -(1 - e) * logsig(h) - e * logsig(-h)

    b = cfg.beta
    if "+" in name:  # a weighted sum of registered losses, with the SFT term added once
        names = name.split("+")
        weights = cfg.weights or (1.0,) * len(names)
        plain = dataclasses.replace(cfg, sft_weight=0.0, weights=())
        total = sum(w * reference_numpy(n, p, r, lengths, nll, plain) for n, w in zip(names, weights))
        return total + cfg.sft_weight * sft_numpy(p, lengths, nll, cfg.sft_normalize)
    r_w, r_l = b * d("chosen"), b * d("rejected")
    avg_w, avg_l = p["chosen"] / lengths["chosen"], p["rejected"] / lengths["rejected"]
    if name in ("dpo", "sigmoid"):
        rows = sig(b * (d("chosen") - d("rejected")))
    elif name == "robust":
        h, e = b * (d("chosen") - d("rejected")), cfg.label_smoothing
        rows = (-(1 - e) * logsig(h) + e * logsig(-h)) / (1 - 2 * e)
    elif name == "ipo":
        rows = (d("chosen", True) - d("rejected", True) - 1 / (2 * b)) ** 2
    elif name == "hinge":
        rows = np.maximum(0, 1 - b * (d("chosen") - d("rejected")))
    elif name == "sigmoid_norm":
        rows = -logsig(b * (d("chosen", True) - d("rejected", True)))
    elif name == "exo_pair":
        e, h = cfg.label_smoothing, b * (d("chosen") - d("rejected"))
        q_w, q_l = 1 / (1 + np.exp(-h)), 1 / (1 + np.exp(h))
        rows = q_w * (np.log(q_w) - np.log(1 - e)) + q_l * (np.log(q_l) - np.log(e))
    elif name == "nca_pair":
        rows = -logsig(r_w) - 0.5 * logsig(-r_w) - 0.5 * logsig(-r_l)
    elif name == "bco_pair":
        rows = -logsig(r_w) - logsig(-r_l)
    elif name == "sppo_hard":
        rows = (d("chosen") - 1 / (2 * b)) ** 2 + (d("rejected") + 1 / (2 * b)) ** 2
    elif name == "aot":  # the batch's sorted policy gaps against its sorted reference gaps
        rows = sig(b * (np.sort(p["chosen"] - p["rejected"]) - np.sort(r["chosen"] - r["rejected"])))
    elif name == "aot_unpaired":
        rows = sig(b * (np.sort(p["chosen"] - r["chosen"]) - np.sort(p["rejected"] - r["rejected"])))
    elif name == "apo_zero":
        rows = 1 - 1 / (1 + np.exp(-r_w)) + 1 / (1 + np.exp(-r_l))
    elif name == "apo_down":
        rows = 1 / (1 + np.exp(-r_w)) + 1 - 1 / (1 + np.exp(-(r_w - r_l)))
    elif name == "discopop":
        h = b * (d("chosen") - d("rejected"))
        blend = 1 / (1 + np.exp(-h / cfg.discopop_tau))
        rows = -logsig(h) * (1 - blend) + np.exp(-h) * blend
    elif name == "sft":
        rows = sft_numpy(p, lengths, nll, cfg.sft_normalize) * np.ones(N)
    elif name == "simpo":
        rows = sig(b * (avg_w - avg_l) - cfg.simpo_gamma)
    elif name == "cpo":
        rows = sig(b * (p["chosen"] - p["rejected"]))
    elif name == "orpo":  # odds(y) = P / (1 - P), P = exp(mean token log-prob)
        log_odds = (avg_w - avg_l) - (np.log(1 - np.exp(avg_w)) - np.log(1 - np.exp(avg_l)))
        rows = sft_numpy(p, lengths, nll, cfg.sft_normalize) - b * logsig(log_odds)
    elif name == "rdpo":
        rows = sig(b * (d("chosen") - d("rejected"))) + cfg.visual_weight * sig(b * (d("chosen") - d("chosen_alt_image")))
    elif name == "mdpo":
        rows = (sig(b * (d("chosen") - d("rejected"))) + sig(b * (d("chosen") - d("chosen_alt_image")))
                - logsig(b * d("chosen") - cfg.mdpo_anchor_delta))
    elif name == "povid":
        rows = 0.5 * sig(b * (d("chosen") - d("rejected"))) + 0.5 * sig(b * (d("chosen") - d("rejected_noisy")))
    elif name == "povid_weighted":
        a, b1, b2 = cfg.povid_weights
        rows = sig(b * (a * d("chosen") - (b1 * d("rejected") + b2 * d("rejected_noisy"))))
    elif name == "dpo_combined":
        g = cfg.combined_weight
        rows = g * sig(b * (d("chosen") - d("rejected"))) + (1 - g) * sig(b * (d("chosen") - d("rejected_sampled")))
    return rows.mean() + cfg.sft_weight * sft_numpy(p, lengths, nll, cfg.sft_normalize)


def sft_numpy(p, lengths, nll, normalize):
    """example: the mean of each answer's token-mean NLL; token: all chosen tokens' mean (TRL)."""
    return -p["chosen"].sum() / lengths["chosen"].sum() if normalize == "token" else nll.mean()


def _batch():
    p = {k: RNG.normal(-40, 8, N) for k in KINDS}
    r = {k: RNG.normal(-40, 8, N) for k in KINDS}
    lengths = {k: RNG.integers(5, 40, N).astype(np.float64) for k in KINDS}
    return p, r, lengths, RNG.uniform(0.5, 3, N)


def _as_rows(p, lengths, nll):
    rows = {k: np.float32(v) for k, v in p.items()}
    rows.update({f"length_{k}": np.float32(v) for k, v in lengths.items()})
    rows["nll_chosen"] = np.float32(nll)
    return rows


CONFIGS = [
    LossConfig(),
    LossConfig(beta=0.5, label_smoothing=0.1, length_normalize=True, sft_weight=0.3, visual_weight=0.5,
               mdpo_anchor_delta=0.2, povid_weights=(1.0, 0.7, 0.3), combined_weight=0.3),
    LossConfig(label_smoothing=0.2, sft_weight=0.3, sft_normalize="token"),
]


SUMS = ["sigmoid+bco_pair+sft", "simpo+sft", "rdpo+apo_zero"]


# exo_pair's KL is undefined at label_smoothing 0 (the settings refuse it), so it runs only
# with the configurations that smooth.
CASES = [pytest.param(name, cfg, id=f"{name}-{cid}")
         for cid, cfg in zip(["defaults", "options", "sft_token"], CONFIGS)
         for name in sorted(TERMS) + SUMS if name != "exo_pair" or cfg.label_smoothing]


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_value_and_gradient_match_numpy(name, cfg):
    _check_against_numpy(name, cfg)


def test_mpo_weights_each_loss():
    """MPO (TRL's loss_type=[sigmoid, bco_pair, sft], loss_weights=[0.8, 0.2, 1.0])."""
    _check_against_numpy("sigmoid+bco_pair+sft", LossConfig(weights=(0.8, 0.2, 1.0), sft_normalize="token"))
    _check_against_numpy("rdpo+sft", LossConfig(weights=(1.0, 0.25), sft_weight=0.1))


def _check_against_numpy(name, cfg):
    p, r, lengths, nll = _batch()
    loss_fn = get_loss(name)
    ref_rows = {k: np.float32(v) for k, v in r.items()}

    def ours(policy_logps):
        rows = _as_rows(p, lengths, nll)
        rows.update(policy_logps)
        return loss_fn(rows, ref_rows, cfg)[0]

    policy = {k: np.float32(p[k]) for k in KINDS}
    value, grads = jax.value_and_grad(ours)(policy)
    expected = reference_numpy(name, p, r, lengths, nll, cfg)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5, atol=1e-6)
    step = 1e-4
    for k in KINDS:  # central differences of the numpy formula, in float64
        numeric = np.zeros(N)
        for i in range(N):
            up, down = dict(p), dict(p)
            up[k], down[k] = p[k].copy(), p[k].copy()
            up[k][i] += step
            down[k][i] -= step
            numeric[i] = (reference_numpy(name, up, r, lengths, nll, cfg)
                          - reference_numpy(name, down, r, lengths, nll, cfg)) / (2 * step)
        np.testing.assert_allclose(np.asarray(grads[k]), numeric, rtol=1e-3, atol=1e-6, err_msg=f"{name} d/d{k}")


def test_metrics_follow_their_definitions():
    p, r, lengths, nll = _batch()
    cfg = LossConfig(beta=0.2)
    _, metrics = get_loss("rdpo")(_as_rows(p, lengths, nll), {k: np.float32(v) for k, v in r.items()}, cfg)
    chosen = 0.2 * (p["chosen"] - r["chosen"])
    rejected = 0.2 * (p["rejected"] - r["rejected"])
    visual = 0.2 * (p["chosen_alt_image"] - r["chosen_alt_image"])
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), chosen.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/margins"]), (chosen - rejected).mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/accuracies"]), (chosen > rejected).mean())
    np.testing.assert_allclose(float(metrics["visual/rewards/accuracies"]), (chosen > visual).mean())
    np.testing.assert_allclose(float(metrics["logps/rejected"]), p["rejected"].mean(), rtol=1e-5)


def test_beta_is_applied_once():
    """Doubling beta doubles the reward metrics (a second beta would quadruple them)."""
    p, r, lengths, nll = _batch()
    ref = {k: np.float32(v) for k, v in r.items()}
    one = get_loss("dpo")(_as_rows(p, lengths, nll), ref, LossConfig(beta=0.1))[1]["rewards/margins"]
    two = get_loss("dpo")(_as_rows(p, lengths, nll), ref, LossConfig(beta=0.2))[1]["rewards/margins"]
    np.testing.assert_allclose(float(two), 2 * float(one), rtol=1e-5)


@pytest.mark.parametrize("kwargs,key", [(dict(beta=0.0), "beta"), (dict(label_smoothing=0.7), "label_smoothing")])
def test_bad_loss_config_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        LossConfig(**kwargs)


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="rdpo"):
        get_loss("dpo2")


def test_robust_is_trls_unbiased_loss_not_conservative_dpo():
    """robust: (-(1-e) logsig(h) + e logsig(-h)) / (1-2e); cDPO (dpo + label_smoothing):
    -(1-e) logsig(h) - e logsig(-h). Equal at e = 0, apart for e > 0."""
    p, r, lengths, nll = _batch()
    rows, ref = _as_rows(p, lengths, nll), {k: np.float32(v) for k, v in r.items()}
    h = 0.1 * ((p["chosen"] - r["chosen"]) - (p["rejected"] - r["rejected"]))
    for e in (0.0, 0.1, 0.3):
        cfg = LossConfig(label_smoothing=e)
        robust, cdpo = float(get_loss("robust")(rows, ref, cfg)[0]), float(get_loss("dpo")(rows, ref, cfg)[0])
        np.testing.assert_allclose(robust, np.mean((-(1 - e) * logsig(h) + e * logsig(-h)) / (1 - 2 * e)), rtol=1e-5)
        np.testing.assert_allclose(cdpo, np.mean(-(1 - e) * logsig(h) - e * logsig(-h)), rtol=1e-5)
        if e:
            assert abs(robust - cdpo) > 1e-2, e
        else:
            np.testing.assert_allclose(robust, cdpo, rtol=1e-6)


@pytest.mark.parametrize("normalize", ["example", "token"])
def test_sft_term_normalises_per_example_or_per_token(normalize):
    """Answers of 2 and 30 tokens: the example mean weighs both answers alike, the token mean
    weighs each token alike, so the long answer dominates."""
    p, r, _, _ = _batch()
    lengths = {k: np.array([2, 30, 2, 30, 5, 9], np.float64) for k in KINDS}
    p["chosen"] = -lengths["chosen"] * np.array([4.0, 0.5, 4.0, 0.5, 1.0, 2.0])  # per-token NLLs 4, 0.5, ...
    nll = -p["chosen"] / lengths["chosen"]
    cfg = LossConfig(sft_weight=1.0, sft_normalize=normalize)
    ref = {k: np.float32(v) for k, v in r.items()}
    loss, metrics = get_loss("dpo")(_as_rows(p, lengths, nll), ref, cfg)
    expected = {"example": nll.mean(), "token": -p["chosen"].sum() / lengths["chosen"].sum()}
    np.testing.assert_allclose(float(metrics["nll/chosen"]), expected[normalize], rtol=1e-5)
    np.testing.assert_allclose(float(loss), reference_numpy("dpo", p, r, lengths, nll, cfg), rtol=1e-5)
    assert abs(expected["example"] - expected["token"]) > 0.5


def test_bad_sft_normalize_names_the_key():
    with pytest.raises(ValueError, match="loss.sft_normalize='sum'"):
        LossConfig(sft_normalize="sum")


def test_wpo_weights_every_term_by_the_pairs_policy_weights():
    """WPO (TRL's use_weighting): each term's per-pair value times exp(wpo_chosen + wpo_rejected),
    the SFT term (a batch scalar, as TRL expands it) included."""
    p, r, lengths, nll = _batch()
    log_w = {k: RNG.uniform(-1.5, -0.1, N) for k in ("chosen", "rejected")}
    weights = np.exp(log_w["chosen"] + log_w["rejected"])
    ref_rows = {k: np.float32(v) for k, v in r.items()}
    cases = (("dpo", LossConfig(wpo=True)), ("ipo", LossConfig(wpo=True, sft_weight=0.5)),
             ("sigmoid+bco_pair+sft", LossConfig(wpo=True, weights=(0.8, 0.2, 1.0), sft_normalize="token")))
    for name, cfg in cases:
        rows = _as_rows(p, lengths, nll)
        rows.update({f"wpo_{k}": np.float32(v) for k, v in log_w.items()})
        loss, metrics = get_loss(name)(rows, ref_rows, cfg)
        plain = dataclasses.replace(cfg, wpo=False, sft_weight=0.0, weights=())
        names = name.split("+")
        expected = cfg.sft_weight * sft_numpy(p, lengths, nll, cfg.sft_normalize) * weights.mean()
        for term, w in zip(names, cfg.weights or (1.0,) * len(names)):
            if term == "sft":
                per_pair = sft_numpy(p, lengths, nll, cfg.sft_normalize) * np.ones(N)
            else:
                per_pair = np.array([reference_numpy(term, *({k: v[i:i + 1] for k, v in part.items()}
                                                            for part in (p, r, lengths)), nll[i:i + 1], plain)
                                     for i in range(N)])
            expected += w * np.mean(per_pair * weights)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(float(metrics["wpo/weight"]), weights.mean(), rtol=1e-5)
