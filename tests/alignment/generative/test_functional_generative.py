"""mmfuse.functional.generative against closed forms and naive references (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import ShapeError
from mmfuse.functional import (
    alphas_cumprod,
    beta_schedule,
    classifier_free_guidance,
    consistency_score,
    cosine_beta_schedule,
    ddim_step,
    ddpm_step,
    gaussian_kl,
    linear_beta_schedule,
    posterior_mean_variance,
    predict_start,
    q_sample,
    reparameterize,
    timestep_embedding,
    v_target,
)

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("steps", [10, 1000])
def test_linear_betas_and_alpha_bar_naive_product(steps: int) -> None:
    betas = linear_beta_schedule(steps)
    scale = 1000 / steps
    assert betas.dtype == D and betas.shape == (steps,)
    assert betas[0].item() == pytest.approx(scale * 1e-4)
    assert betas[-1].item() == pytest.approx(min(scale * 0.02, 0.999))
    ab = alphas_cumprod(betas)
    prod = 1.0
    for t in range(steps):
        prod *= 1 - betas[t].item()
        assert ab[t].item() == pytest.approx(prod, rel=1e-12)


def test_cosine_alpha_bar_closed_form() -> None:
    steps, s = 100, 0.008
    betas = cosine_beta_schedule(steps, s=s)
    ab = alphas_cumprod(betas)

    def f(t: float) -> float:
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    unclipped = (betas < 0.999).nonzero().flatten().tolist()
    assert len(unclipped) == steps - 1  # only the very last beta is clipped
    for t in unclipped:
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert bool((betas > 0).all()) and bool((ab[1:] < ab[:-1]).all())


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_is_the_marginal_of_the_chain(kind: str) -> None:
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t composes to N(sqrt(ab) x0, 1 - ab)."""
    betas = beta_schedule(kind, 50)
    ab = alphas_cumprod(betas)
    coef, var = 1.0, 0.0
    for t in range(50):
        b = betas[t].item()
        coef, var = coef * math.sqrt(1 - b), (1 - b) * var + b
        assert coef == pytest.approx(math.sqrt(ab[t].item()), rel=1e-10)
        assert var == pytest.approx(1 - ab[t].item(), rel=1e-10, abs=1e-14)


def test_beta_schedule_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"beta_schedule: unknown `kind` 'quadratic'; expected one of \['linear', 'cosine', 'scaled_linear', 'sigmoid'\]"):
        beta_schedule("quadratic", 10)


# ----------------------------------------------------------------------------- posterior


def bayes_posterior(x0, xt, ab, abp):
    """q(x_prev | x_t, x0) by conditioning Gaussians: a naive derivation independent of eq. 7."""
    a = ab / abp  # q(x_t | x_prev) = N(sqrt(a) x_prev, 1 - a)
    prec = a / (1 - a) + 1 / (1 - abp)
    var = 1 / prec
    mean = var * (math.sqrt(a) / (1 - a) * xt + math.sqrt(abp) / (1 - abp) * x0)
    return mean, var


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("stride", [1, 7])
def test_posterior_mean_variance_matches_bayes(kind: str, stride: int) -> None:
    ab = alphas_cumprod(beta_schedule(kind, 100))
    x0 = torch.randn(3, 4, generator=gen(1), dtype=D)
    xt = torch.randn(3, 4, generator=gen(2), dtype=D)
    for t in range(stride, 100, 13):
        abt, abp = ab[t].item(), ab[t - stride].item()
        mean, var = posterior_mean_variance(x0, xt, abt, abp)
        want_mean, want_var = bayes_posterior(x0, xt, abt, abp)
        torch.testing.assert_close(mean, want_mean, rtol=1e-9, atol=1e-12)
        assert var == pytest.approx(want_var, rel=1e-9)
        # Consecutive steps: DDPM's beta_tilde = beta_t (1 - ab_prev) / (1 - ab_t).
        if stride == 1:
            beta = 1 - abt / abp
            assert var == pytest.approx(beta * (1 - abp) / (1 - abt), rel=1e-12)


def test_posterior_accepts_per_sample_alpha_bar() -> None:
    x0 = torch.randn(3, 2, 2, generator=gen(1), dtype=D)
    xt = torch.randn(3, 2, 2, generator=gen(2), dtype=D)
    ab = torch.tensor([0.5, 0.3, 0.9], dtype=D)
    abp = torch.tensor([0.6, 0.8, 0.95], dtype=D)
    mean, var = posterior_mean_variance(x0, xt, ab, abp)
    for i in range(3):
        m, v = posterior_mean_variance(x0[i], xt[i], ab[i].item(), abp[i].item())
        torch.testing.assert_close(mean[i], m)
        assert isinstance(var, torch.Tensor)
        assert var[i].flatten()[0].item() == pytest.approx(v)


def test_ddpm_step_mean_and_noise() -> None:
    x0 = torch.randn(4, 3, generator=gen(1), dtype=D)
    xt = torch.randn(4, 3, generator=gen(2), dtype=D)
    z = torch.randn(4, 3, generator=gen(3), dtype=D)
    mean, var = posterior_mean_variance(x0, xt, 0.4, 0.7)
    torch.testing.assert_close(ddpm_step(x0, xt, 0.4, 0.7, None), mean)
    torch.testing.assert_close(ddpm_step(x0, xt, 0.4, 0.7, z), mean + math.sqrt(var) * z)


# ----------------------------------------------------------------------------- parameterisations


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_predict_start_inverts_each_target(prediction: str) -> None:
    x0 = torch.randn(5, 6, generator=gen(1), dtype=D)
    eps = torch.randn(5, 6, generator=gen(2), dtype=D)
    ab = torch.rand(5, generator=gen(3), dtype=D) * 0.98 + 0.01
    xt = q_sample(x0, eps, ab)
    out = {"eps": eps, "v": v_target(x0, eps, ab), "x0": x0}[prediction]
    x0_hat, eps_hat = predict_start(xt, out, ab, prediction)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_q_sample_and_v_target_naive() -> None:
    x0 = torch.randn(2, 3, generator=gen(1), dtype=D)
    eps = torch.randn(2, 3, generator=gen(2), dtype=D)
    ab = torch.tensor([0.25, 0.64], dtype=D)
    for i in range(2):
        a = ab[i].item()
        torch.testing.assert_close(q_sample(x0, eps, ab)[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i])
        torch.testing.assert_close(v_target(x0, eps, ab)[i], math.sqrt(a) * eps[i] - math.sqrt(1 - a) * x0[i])


# ----------------------------------------------------------------------------- DDIM


def test_ddim_eta0_follows_the_marginal() -> None:
    """With the true x0 and eps, a deterministic DDIM step lands exactly on q_sample at ab_prev."""
    x0 = torch.randn(3, 4, generator=gen(1), dtype=D)
    eps = torch.randn(3, 4, generator=gen(2), dtype=D)
    torch.testing.assert_close(ddim_step(x0, eps, 0.3, 0.8), q_sample(x0, eps, 0.8))
    z = torch.randn(3, 4, generator=gen(3), dtype=D)
    torch.testing.assert_close(ddim_step(x0, eps, 0.3, 0.8, eta=0.0, noise=z), q_sample(x0, eps, 0.8))


def test_ddim_eta1_has_the_posterior_variance() -> None:
    x0 = torch.randn(3, 4, generator=gen(1), dtype=D)
    eps = torch.randn(3, 4, generator=gen(2), dtype=D)
    z1, z2 = torch.randn(2, 3, 4, generator=gen(3), dtype=D)
    ab, abp = 0.3, 0.8
    sigma = (ddim_step(x0, eps, ab, abp, 1.0, z1) - ddim_step(x0, eps, ab, abp, 1.0, z2)) / (z1 - z2)
    _, var = posterior_mean_variance(x0, x0, ab, abp)
    torch.testing.assert_close(sigma, torch.full_like(sigma, math.sqrt(var)))


def test_guidance_combination() -> None:
    c = torch.randn(4, 3, generator=gen(1), dtype=D)
    u = torch.randn(4, 3, generator=gen(2), dtype=D)
    torch.testing.assert_close(classifier_free_guidance(c, u, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(c, u, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(c, u, 3.0), 3 * c - 2 * u)


# ----------------------------------------------------------------------------- Gaussians


def naive_kl(mq, lq, mp, lp):
    out = torch.zeros(mq.shape[0], dtype=D)
    for i in range(mq.shape[0]):
        for j in range(mq.shape[1]):
            sq, sp = math.exp(0.5 * lq[i, j].item()), math.exp(0.5 * lp[i, j].item())
            d = mq[i, j].item() - mp[i, j].item()
            out[i] += math.log(sp / sq) + (sq**2 + d**2) / (2 * sp**2) - 0.5
    return out


def test_gaussian_kl_naive_and_torch_distributions() -> None:
    mq, lq, mp, lp = torch.randn(4, 3, 5, generator=gen(4), dtype=D)
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), naive_kl(mq, lq, mp, lp))
    zeros = torch.zeros_like(mq)
    torch.testing.assert_close(gaussian_kl(mq, lq), naive_kl(mq, lq, zeros, zeros))
    q = torch.distributions.Normal(mq, (0.5 * lq).exp())
    p = torch.distributions.Normal(mp, (0.5 * lp).exp())
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), torch.distributions.kl_divergence(q, p).sum(-1))
    assert gaussian_kl(zeros, zeros).abs().max().item() == 0.0


def test_gaussian_kl_bf16_computes_in_float32() -> None:
    m, lv = torch.randn(2, 3, 8, generator=gen(5))
    out = gaussian_kl(m.bfloat16(), lv.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, gaussian_kl(m.bfloat16().float(), lv.bfloat16().float()))


def test_gradcheck_closed_forms() -> None:
    mq, lq, mp, lp = (torch.randn(2, 3, generator=gen(k), dtype=D).requires_grad_() for k in range(4))
    assert torch.autograd.gradcheck(gaussian_kl, (mq, lq, mp, lp))
    z = torch.randn(2, 3, generator=gen(9), dtype=D)
    assert torch.autograd.gradcheck(lambda m, lv: reparameterize(m, lv, z), (mq, lq))
    ab = torch.tensor([0.3, 0.7], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: q_sample(a, b, c), (mq, lq, ab))
    assert torch.autograd.gradcheck(lambda x, o, c: predict_start(x, o, c, "v")[0], (mq, lq, ab))


def test_reparameterize_distribution() -> None:
    m, lv = torch.tensor([1.0, -2.0], dtype=D), torch.tensor([0.0, math.log(4.0)], dtype=D)
    z = torch.randn(200_000, 2, generator=gen(7), dtype=D)
    s = reparameterize(m, lv, z)
    torch.testing.assert_close(s.mean(0), m, atol=0.02, rtol=0)
    torch.testing.assert_close(s.std(0), torch.tensor([1.0, 2.0], dtype=D), atol=0.02, rtol=0)


# ----------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_naive(dim: int) -> None:
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (3, dim) and emb.dtype == torch.float32
    half = dim // 2
    for i, ti in enumerate(t.tolist()):
        for k in range(half):
            w = 10000 ** (-k / half)
            assert emb[i, k].item() == pytest.approx(math.cos(ti * w), abs=1e-4)
            assert emb[i, half + k].item() == pytest.approx(math.sin(ti * w), abs=1e-4)
    if dim % 2:
        assert bool((emb[:, -1] == 0).all())


# ----------------------------------------------------------------------------- consistency


def naive_consistency(g, c):
    n = g.shape[0]
    cos = [torch.dot(g[i], c[i]).item() / (g[i].norm() * c[i].norm()).item() for i in range(n)]
    hits = 0
    for i in range(n):
        scores = [torch.dot(g[i], c[j]).item() / (g[i].norm() * c[j].norm()).item() for j in range(n)]
        hits += scores[i] >= max(scores) - 1e-12
    return sum(cos) / n, hits / n


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 1000))
def test_consistency_score_naive(n: int, d: int, seed: int) -> None:
    g = torch.randn(n, d, generator=gen(seed), dtype=D)
    c = torch.randn(n, d, generator=gen(seed + 1), dtype=D)
    score = consistency_score(g, c)
    cos, acc = naive_consistency(g, c)
    assert score.cosine.item() == pytest.approx(cos, abs=1e-9)
    assert score.retrieval_accuracy.item() == pytest.approx(acc)
    assert score.per_sample.shape == (n,)


def test_consistency_score_ties_from_repeated_conditions_count_as_hits() -> None:
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 2]), 3).float()
    probs = onehot * 0.8 + 0.1
    probs[4] = torch.tensor([0.7, 0.2, 0.1])  # sample 4 looks like class 0
    score = consistency_score(probs, onehot)
    assert score.retrieval_accuracy.item() == pytest.approx(4 / 5)
    assert score.cosine.dtype == torch.float32


def test_consistency_score_validates() -> None:
    with pytest.raises(ShapeError, match=r"consistency_score: expected `condition_emb` of shape \(N, D\) with N=4, D=3, got \(5, 3\)"):
        consistency_score(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match="consistency_score: expected `generated_emb` to be a floating-point tensor"):
        consistency_score(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3))


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 4), d=st.integers(1, 5), seed=st.integers(0, 1000),
       prediction=st.sampled_from(["eps", "v", "x0"]),
       ab_lo=st.floats(1e-4, 0.999))
def test_predict_start_round_trip_property(b: int, d: int, seed: int, prediction: str,
                                           ab_lo: float) -> None:
    x0 = torch.randn(b, d, generator=gen(seed), dtype=D)
    eps = torch.randn(b, d, generator=gen(seed + 1), dtype=D)
    ab = torch.full((b,), ab_lo, dtype=D)
    xt = q_sample(x0, eps, ab)
    out = {"eps": eps, "v": v_target(x0, eps, ab), "x0": x0}[prediction]
    x0_hat, eps_hat = predict_start(xt, out, ab, prediction)
    torch.testing.assert_close(x0_hat, x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(eps_hat, eps, atol=1e-6, rtol=1e-6)
    # A deterministic DDIM step with the true x0 and eps stays on the marginal.
    torch.testing.assert_close(ddim_step(x0_hat, eps_hat, ab, 1.0), x0, atol=1e-6, rtol=1e-6)


def test_consistency_score_refuses_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="^consistency_score: expected at least one pair to score, got N=0.$"):
        consistency_score(torch.randn(0, 4), torch.randn(0, 4))


def test_boundary_checks_of_kl_embedding_and_schedule() -> None:
    from mmfuse.functional import alphas_cumprod, gaussian_kl, timestep_embedding

    with pytest.raises(ShapeError, match=r"^gaussian_kl: expected `logvar` of shape \(B, D\) with "
                       r"B=3, D=2, got \(3, 4\)\.$"):
        gaussian_kl(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"^timestep_embedding: expected `dim` to be a positive int, got 0\.$"):
        timestep_embedding(torch.arange(3), 0)
    with pytest.raises(ShapeError, match=r"^timestep_embedding: expected `t` of shape \(B,\), got \(3, 2\)\.$"):
        timestep_embedding(torch.zeros(3, 2), 8)
    with pytest.raises(TypeError, match=r"^timestep_embedding: expected `t` to be a tensor"):
        timestep_embedding([1, 2], 8)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"^alphas_cumprod: expected `betas` of shape \(T,\), got \(3, 3\)\.$"):
        alphas_cumprod(torch.full((3, 3), 0.1))
