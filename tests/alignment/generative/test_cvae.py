"""CVAEHead: loss parts against naive formulas, sampling determinism, device and dtype."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.alignment import ConditionalDecoder, CVAEHead

E, L = 5, 3


def make(**kw) -> CVAEHead:
    torch.manual_seed(0)
    return CVAEHead((1, 4, 4), E, L, **{"hidden_dim": 16, **kw}).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_kl_row(mq, lq, mp, lp) -> float:
    total = 0.0
    for j in range(len(mq)):
        vq, vp = math.exp(lq[j]), math.exp(lp[j])
        total += 0.5 * (math.log(vp / vq) + (vq + (mq[j] - mp[j]) ** 2) / vp - 1)
    return total


@pytest.mark.parametrize("prior", ["learned", "standard"])
def test_loss_parts_match_naive_formulas(prior: str) -> None:
    head = make(prior=prior, obs_sigma=0.5).double()
    x = torch.randn(4, 1, 4, 4, generator=gen(1), dtype=torch.float64)
    c = torch.randn(4, E, generator=gen(2), dtype=torch.float64)
    z = torch.randn(4, L, generator=gen(3), dtype=torch.float64)
    out = head(x, c, noise=z)
    got = head.loss(x, c, beta=0.7, noise=z)
    recon, kl = 0.0, 0.0
    for i in range(4):
        recon += ((x[i] - out.reconstruction[i]) ** 2).sum().item() / (2 * 0.5**2)
        mp = out.prior_mean[i].tolist() if prior == "learned" else [0.0] * L
        lp = out.prior_logvar[i].tolist() if prior == "learned" else [0.0] * L
        kl += naive_kl_row(out.mean[i].tolist(), out.logvar[i].tolist(), mp, lp)
    assert got.reconstruction.item() == pytest.approx(recon / 4, rel=1e-10)
    assert got.kl.item() == pytest.approx(kl / 4, rel=1e-10)
    assert got.total.item() == pytest.approx(recon / 4 + 0.7 * kl / 4, rel=1e-10)
    if prior == "standard":
        assert torch.equal(out.prior_mean, torch.zeros(4, L, dtype=torch.float64))


def test_forward_pieces() -> None:
    head = make()
    x, c = torch.randn(3, 1, 4, 4, generator=gen(1)), torch.randn(3, E, generator=gen(2))
    z = torch.randn(3, L, generator=gen(3))
    out = head(x, c, noise=z)
    torch.testing.assert_close(out.z, out.mean + (0.5 * out.logvar).exp() * z)
    torch.testing.assert_close(out.reconstruction, head.decode(out.z, c))
    torch.testing.assert_close(head(x, c).z, head(x, c).mean)  # eval, no noise: the mean
    head.train()
    assert not torch.allclose(head(x, c).z, head(x, c).z)


def test_sample_is_deterministic_given_a_generator_and_follows_the_prior() -> None:
    head = make()
    c = torch.randn(3, E, generator=gen(1))
    a, b = head.sample(c, generator=gen(5)), head.sample(c, generator=gen(5))
    assert torch.equal(a, b) and a.shape == (3, 1, 4, 4)
    assert not torch.allclose(a, head.sample(c, generator=gen(6)))
    noise = torch.randn(3, L, generator=gen(5))
    torch.testing.assert_close(a, head.sample(c, noise=noise))
    pm, plv = head.prior_params(c)
    torch.testing.assert_close(a, head.decode(pm + (0.5 * plv).exp() * noise, c))
    torch.testing.assert_close(head.sample(c, temperature=0.0, generator=gen(9)), head.decode(pm, c))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sample_keeps_device_and_dtype(device: str, dtype: torch.dtype) -> None:
    ref = make()
    head = make().to(device=device, dtype=dtype)
    c = torch.randn(3, E, generator=gen(1))
    got = head.sample(c.to(device, dtype), generator=gen(2))
    assert got.dtype == dtype and got.device.type == device
    want = ref.sample(c, generator=gen(2))
    tol = 1e-5 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(got.float().cpu(), want, atol=tol * (1 + want.abs().max().item()), rtol=tol)
    loss = head.loss(torch.randn(3, 1, 4, 4, device=device, dtype=dtype), c.to(device, dtype),
                     generator=gen(3))
    assert loss.total.dtype == torch.float32 if dtype == torch.bfloat16 else loss.total.dtype == dtype


def test_custom_decoder_and_sequences() -> None:
    torch.manual_seed(0)
    dec = ConditionalDecoder(L + E, (8, 2), channels=8)
    head = CVAEHead((8, 2), E, L, hidden_dim=16, decoder=dec)
    assert head.decoder is dec
    x, c = torch.randn(2, 8, 2), torch.randn(2, E)
    assert head(x, c).reconstruction.shape == (2, 8, 2)
    assert head.sample(c, generator=gen(0)).shape == (2, 8, 2)
    loss = head.loss(x, c, generator=gen(1)).total
    loss.backward()
    assert dec.stem.weight.grad is not None


def test_training_lowers_the_negative_elbo() -> None:
    torch.manual_seed(0)
    head = CVAEHead(4, 2, 2, hidden_dim=32, obs_sigma=0.3)
    c = torch.eye(2).repeat(32, 1)
    x = torch.where(c[:, :1] > 0, torch.tensor([1.0, -1, 1, -1]), torch.tensor([-1.0, 1, 1, 1]))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = gen(0)
    first = None
    for _ in range(200):
        loss = head.loss(x, c, generator=g).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 * first
    s = head.eval().sample(torch.eye(2), generator=gen(1))
    torch.testing.assert_close(s, x[:2], atol=0.4, rtol=0)


def test_gradcheck_loss() -> None:
    head = make(hidden_dim=4).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, E, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, L, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: head.loss(a, b, noise=z).total, (x, c))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"CVAEHead: unknown `prior` 'flow'; expected one of \['learned', 'standard'\]"):
        CVAEHead(4, 2, 2, prior="flow")
    with pytest.raises(TypeError, match=r"CVAEHead: expected `decoder` to be an nn\.Module, got function"):
        CVAEHead(4, 2, 2, decoder=lambda z: z)
    head = make()
    with pytest.raises(ShapeError, match=r"CVAEHead: expected `x` of shape \(B, C, H, W\) with C=1, H=4, W=4, got \(2, 1, 4, 5\)"):
        head(torch.randn(2, 1, 4, 5), torch.randn(2, E))
    with pytest.raises(ShapeError, match=r"CVAEHead: expected `cond` of shape \(B, E\) with E=5, B=2, got \(3, 5\)"):
        head(torch.randn(2, 1, 4, 4), torch.randn(3, E))
    with pytest.raises(ShapeError, match=r"CVAEHead: expected `noise` of shape \(B, L\) with B=2, L=3, got \(2, 4\)"):
        head.sample(torch.randn(2, E), noise=torch.randn(2, 4))


def test_loss_and_sampling_argument_values_are_checked() -> None:
    head = make()
    x, c = torch.randn(2, 1, 4, 4), torch.randn(2, E)
    for beta in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match=r"^CVAEHead: expected `beta` to be a non-negative number, got "):
            head.loss(x, c, beta=beta)
    with pytest.raises(ValueError, match=r"^CVAEHead: expected at least one sample in `x` to average the loss over, got B=0\.$"):
        head.loss(x[:0], c[:0])
    with pytest.raises(ValueError, match=r"^CVAEHead: expected `temperature` to be a non-negative number, got nan\.$"):
        head.sample(c, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"^CVAEHead: expected `obs_sigma` to be a positive number, got nan\.$"):
        CVAEHead(4, 2, 2, obs_sigma=float("nan"))
