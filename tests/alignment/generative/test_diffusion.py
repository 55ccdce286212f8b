"""DiffusionHead: training loss, DDPM/DDIM samplers against naive loops, guidance, inversion."""

from __future__ import annotations

import math

import pytest
import torch

from _peers import excite
from mmfuse import ShapeError
from mmfuse.alignment import DiffusionHead
from mmfuse.functional import alphas_cumprod, beta_schedule, v_target

E = 6


def make(shape=(1, 4, 4), **kw) -> DiffusionHead:
    torch.manual_seed(0)
    kw = {"hidden_dim": 16, "num_blocks": 2, "num_steps": 100, **kw}
    return excite(DiffusionHead(shape, E, **kw)).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_sample(head: DiffusionHead, cond, uncond, scale, x, steps, *, sampler="ddim",
                 noises=None, clip=None):
    """A plain float64 loop over the sampler equations, calling the denoiser directly."""
    ab = alphas_cumprod(beta_schedule(head.schedule, head.num_steps)).tolist()
    n = head.num_steps
    ts = sorted({round(n - 1 - i * (n - 1) / (steps - 1)) for i in range(steps)}, reverse=True) \
        if steps > 1 else [n - 1]
    x = x.double()
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        a, ap = ab[t], (ab[prev] if prev >= 0 else 1.0)
        tt = torch.full((x.shape[0],), t)
        out_c = head(x.float(), tt, cond).double()
        out = out_c
        if scale != 1.0:
            out_u = head(x.float(), tt, uncond).double()
            out = out_u + scale * (out_c - out_u)
        if head.prediction == "eps":
            eps = out
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        else:
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
            eps = math.sqrt(1 - a) * x + math.sqrt(a) * out
        if clip is not None:
            x0 = x0.clamp(*clip)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        if sampler == "ddim":
            x = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
        else:
            beta = 1 - a / ap
            mean = (math.sqrt(ap) * beta / (1 - a)) * x0 + (math.sqrt(1 - beta) * (1 - ap) / (1 - a)) * x
            x = mean
            if prev >= 0:
                x = x + math.sqrt(beta * (1 - ap) / (1 - a)) * noises[i].double()
    return x.float()


# ----------------------------------------------------------------------------- configuration


def test_schedule_attributes_and_state_dict_excludes_them() -> None:
    head = DiffusionHead(8, E, num_steps=30, schedule="linear")
    torch.testing.assert_close(head.alphas_bar, alphas_cumprod(beta_schedule("linear", 30)))
    assert not any("alpha" in k or "beta" in k for k in head.state_dict())
    assert "num_steps=30" in repr(head) and "schedule='linear'" in repr(head)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"schedule": "quadratic"}, r"DiffusionHead: unknown `schedule` 'quadratic'; expected one of \['linear', 'cosine', 'scaled_linear', 'sigmoid'\]"),
    ({"prediction": "x1"}, r"DiffusionHead: unknown `prediction` 'x1'; expected one of \['eps', 'v'\]"),
    ({"cond_dropout": 1.0}, r"DiffusionHead: expected `cond_dropout` in \[0, 1\), got 1.0"),
    ({"num_steps": 0}, r"DiffusionHead: expected `num_steps` to be a positive int, got 0"),
])
def test_config_errors(kw, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        DiffusionHead((1, 4, 4), E, **kw)


def test_target_shape_error() -> None:
    with pytest.raises(ValueError, match=r"DiffusionHead: expected `target_shape` to be a tuple of positive ints"):
        DiffusionHead((1, 2, 3, 4), E)


def test_sampling_errors() -> None:
    head = make()
    c = torch.randn(2, E)
    with pytest.raises(ValueError, match=r"DiffusionHead: expected `steps` <= num_steps=100, got 101"):
        head.sample(c, steps=101)
    with pytest.raises(ValueError, match=r"DiffusionHead: unknown `sampler` 'euler'"):
        head.sample(c, sampler="euler")
    with pytest.raises(ShapeError, match=r"DiffusionHead: expected `uncond` of shape \(B, E\) with B=2, E=6, got \(3, 6\)"):
        head.sample(c, uncond=torch.randn(3, E), guidance_scale=2.0)
    with pytest.raises(ShapeError, match=r"DiffusionHead: expected `noise` of shape \(B, C, H, W\)"):
        head.sample(c, noise=torch.randn(2, 1, 4, 5))
    with pytest.raises(ShapeError, match=r"DiffusionHead: expected `cond` of shape \(B, E\) with E=6, got \(2, 5\)"):
        head.sample(torch.randn(2, 5))


# ----------------------------------------------------------------------------- training loss


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_matches_manual_computation(prediction: str) -> None:
    head = make(prediction=prediction, schedule="linear")
    x0 = torch.randn(5, 1, 4, 4, generator=gen(1))
    c = torch.randn(5, E, generator=gen(2))
    t = torch.tensor([0, 10, 50, 98, 99])
    noise = torch.randn(5, 1, 4, 4, generator=gen(3))
    ab = alphas_cumprod(beta_schedule("linear", 100))[t].float().reshape(5, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = noise if prediction == "eps" else v_target(x0, noise, ab.flatten())
    want = (head(x_t, t, c) - target).square().mean()
    got = head.loss(x0, c, t=t, noise=noise)
    torch.testing.assert_close(got, want)


def test_loss_condition_dropout_only_in_training() -> None:
    head = make(cond_dropout=0.5)
    x0, c = torch.randn(64, 1, 4, 4, generator=gen(1)), torch.randn(64, E, generator=gen(2))
    t, noise = torch.randint(0, 100, (64,), generator=gen(3)), torch.randn(64, 1, 4, 4, generator=gen(4))
    plain = head.loss(x0, c, t=t, noise=noise)
    assert head.loss(x0, c, t=t, noise=noise, generator=gen(5)) == plain  # eval: no dropout
    head.train()
    dropped = head.loss(x0, c, t=t, noise=noise, generator=gen(5))
    drop = torch.rand(64, generator=gen(5)) < 0.5
    with torch.no_grad():
        torch.testing.assert_close(dropped, head.loss(x0, c, t=t, noise=noise, drop=drop))
    assert dropped != plain


def test_drop_uses_the_null_condition() -> None:
    head = make()
    x, t, c = torch.randn(3, 1, 4, 4), torch.tensor([1, 2, 3]), torch.randn(3, E)
    drop = torch.tensor([True, False, True])
    out = head(x, t, c, drop=drop)
    null = head.null_cond.expand(3, E)
    torch.testing.assert_close(out[drop], head(x, t, null)[drop])
    torch.testing.assert_close(out[~drop], head(x, t, c)[~drop])


def test_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    head = DiffusionHead(4, E, hidden_dim=32, num_blocks=2, num_steps=50)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = gen(0)
    x0 = torch.tensor([[1.0, -1.0, 0.5, 0.0]]).repeat(64, 1)
    c = torch.ones(64, E)
    first = None
    for _ in range(150):
        loss = head.loss(x0, c, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_ddim_matches_naive_loop(prediction: str, scale: float) -> None:
    head = make(prediction=prediction)
    c, u = torch.randn(3, E, generator=gen(1)), torch.randn(3, E, generator=gen(2))
    x_T = torch.randn(3, 1, 4, 4, generator=gen(3))
    got = head.sample(c, steps=12, guidance_scale=scale, uncond=u, noise=x_T)
    want = naive_sample(head, c, u, scale, x_T, 12)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_guidance_scale_one_is_plain_conditional_sampling() -> None:
    head = make()
    c, u1, u2 = (torch.randn(3, E, generator=gen(k)) for k in range(3))
    x_T = torch.randn(3, 1, 4, 4, generator=gen(5))
    plain = naive_sample(head, c, None, 1.0, x_T, 10)
    for u in (None, u1, u2):
        torch.testing.assert_close(head.sample(c, steps=10, noise=x_T, uncond=u), plain,
                                   atol=1e-4, rtol=1e-4)
    # Scale 0 is plain sampling under the unconditional input; other scales differ.
    torch.testing.assert_close(head.sample(c, steps=10, noise=x_T, uncond=u1, guidance_scale=0.0),
                               head.sample(u1, steps=10, noise=x_T), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(head.sample(c, steps=10, noise=x_T, uncond=u1, guidance_scale=2.0), plain)


def test_ddpm_matches_naive_loop_with_the_same_draws() -> None:
    head = make()
    c = torch.randn(2, E, generator=gen(1))
    got = head.sample(c, sampler="ddpm", steps=8, generator=gen(7), clip_x0=(-1.0, 1.0))
    g = gen(7)
    x_T = torch.randn(2, 1, 4, 4, generator=g)
    noises = [torch.randn(2, 1, 4, 4, generator=g) for _ in range(7)]
    want = naive_sample(head, c, None, 1.0, x_T, 8, sampler="ddpm", noises=noises, clip=(-1.0, 1.0))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert got.abs().max() <= 1.0  # the last step returns the clipped x0


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_deterministic_given_a_generator(sampler: str, eta: float) -> None:
    head = make()
    c = torch.randn(3, E)
    a = head.sample(c, sampler=sampler, eta=eta, steps=6, generator=gen(3))
    b = head.sample(c, sampler=sampler, eta=eta, steps=6, generator=gen(3))
    other = head.sample(c, sampler=sampler, eta=eta, steps=6, generator=gen(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)


def test_ddim_eta0_depends_only_on_the_initial_noise() -> None:
    head = make()
    c, x_T = torch.randn(2, E), torch.randn(2, 1, 4, 4)
    a = head.sample(c, steps=6, noise=x_T, generator=gen(1))
    b = head.sample(c, steps=6, noise=x_T, generator=gen(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("prediction", "schedule"), [("eps", "linear"), ("v", "cosine")])
def test_ddim_inversion_round_trip_converges(prediction: str, schedule: str) -> None:
    """Invert data to noise and sample it back: the error vanishes as the steps grow.

    The denoiser is briefly trained (a random one has no smooth noise estimate to invert).
    eps-prediction is paired with the linear schedule: under the cosine schedule the last
    alpha_bar is ~1e-9 and reading x0 from an eps estimate there is ill-conditioned
    (documented in ``ddim_invert``).
    """
    torch.manual_seed(0)
    head = DiffusionHead(6, E, hidden_dim=32, num_blocks=2, num_steps=1000, schedule=schedule,
                         prediction=prediction)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = gen(0)
    data, c = torch.rand(8, 6, generator=gen(2)) * 2 - 1, torch.randn(8, E, generator=gen(1))
    for _ in range(250):
        loss = head.loss(data, c, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    errors = []
    for steps in (10, 100, 1000):
        x_T = head.ddim_invert(data, c, steps=steps)
        back = head.sample(c, steps=steps, noise=x_T)
        errors.append((back - data).abs().max().item())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.01
    # The inverted noise is a real encoding: far from the data, roughly unit scale.
    assert (x_T - data).abs().max().item() > 0.5
    assert 0.3 < x_T.std().item() < 3.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_samplers_keep_device_and_dtype(device: str, dtype: torch.dtype) -> None:
    ref = make()
    head = make().to(device=device, dtype=dtype)
    c = torch.randn(3, E, generator=gen(1))
    for sampler in ("ddim", "ddpm"):
        want = ref.sample(c, sampler=sampler, steps=5, generator=gen(2), guidance_scale=2.0)
        got = head.sample(c.to(device, dtype), sampler=sampler, steps=5, generator=gen(2),
                          guidance_scale=2.0)
        assert got.dtype == dtype and got.device.type == device
        tol = 1e-4 if dtype == torch.float64 else 0.25
        torch.testing.assert_close(got.float().cpu(), want, atol=tol * (1 + want.abs().max().item()), rtol=tol)
    x_T = head.ddim_invert(torch.randn(2, 1, 4, 4, device=device, dtype=dtype),
                           c[:2].to(device, dtype), steps=4)
    assert x_T.device.type == device and bool(torch.isfinite(x_T).all())


def test_sequence_target_samples() -> None:
    head = make(shape=(5, 3), prediction="v", schedule="linear")
    out = head.sample(torch.randn(2, E), steps=4, generator=gen(0))
    assert out.shape == (2, 5, 3) and bool(torch.isfinite(out).all())


def test_gradcheck_denoiser() -> None:
    head = make(shape=(3,), hidden_dim=4, num_blocks=1).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, E, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 70])
    assert torch.autograd.gradcheck(lambda a, b: head(a, t, b), (x, c))


# ----------------------------------------------------------------------------- UNet backbone


@pytest.mark.parametrize("shape", [(2, 8, 8), (12, 3)])
def test_unet_backbone_starts_at_zero_and_samples(shape) -> None:
    torch.manual_seed(0)
    head = DiffusionHead(shape, E, hidden_dim=16, num_blocks=1, num_steps=50, backbone="unet",
                         unet_channels=8).eval()
    assert head.levels == 2
    x, t, c = torch.randn(3, *shape), torch.tensor([0, 10, 49]), torch.randn(3, E)
    assert torch.equal(head(x, t, c), torch.zeros(3, *shape))  # zero-initialised output layer
    for block in (*head.net.down_blocks, head.net.mid, *head.net.up_blocks):
        h = torch.randn(3, 8, *([4, 4] if len(shape) == 3 else [6]))
        assert torch.equal(block(h, torch.randn(3, 16)), h)  # AdaLN-zero: identity at init
    excite(head)
    out = head.sample(c, steps=6, guidance_scale=2.0, generator=gen(1))
    assert out.shape == (3, *shape) and bool(torch.isfinite(out).all())
    want = naive_sample(head, c, head.null_cond.expand(3, E), 2.0,
                        torch.randn(3, *shape, generator=gen(1)), 6)
    torch.testing.assert_close(out, want, atol=1e-3, rtol=1e-3)  # float32 vs a float64 loop


def test_unet_trains() -> None:
    torch.manual_seed(0)
    head = DiffusionHead((1, 4, 4), E, hidden_dim=16, num_blocks=1, num_steps=50,
                         backbone="unet", unet_channels=8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    x0 = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4).repeat(32, 1, 1, 1)
    c, g = torch.ones(32, E), gen(0)
    losses = []
    for _ in range(120):
        loss = head.loss(x0, c, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])


def test_unet_config_errors() -> None:
    with pytest.raises(ValueError, match=r"DiffusionHead: expected an image \(C, H, W\) or sequence \(T, D\) `target_shape` for backbone='unet', got \(6,\)"):
        DiffusionHead(6, E, backbone="unet")
    with pytest.raises(ValueError, match=r"DiffusionHead: expected spatial sizes \(6, 6\) of `target_shape` divisible by 2\*\*levels=4, got \(1, 6, 6\)"):
        DiffusionHead((1, 6, 6), E, backbone="unet", levels=2)
    with pytest.raises(ValueError, match=r"DiffusionHead: unknown `backbone` 'dit'; expected one of \['mlp', 'unet'\]"):
        DiffusionHead((1, 6, 6), E, backbone="dit")
    assert DiffusionHead((1, 6, 10), E, backbone="unet", unet_channels=8).levels == 1


def test_timestep_errors() -> None:
    head = make()
    with pytest.raises(TypeError, match=r"DiffusionHead: expected `t` to be an integer tensor of timesteps, got torch\.float32"):
        head(torch.randn(2, 1, 4, 4), torch.zeros(2), torch.randn(2, E))


def test_loss_gradcheck_and_low_precision() -> None:
    head = make(shape=(3,), hidden_dim=4, num_blocks=1).double()
    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, E, dtype=torch.float64, requires_grad=True)
    t, noise = torch.tensor([5, 60]), torch.randn(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: head.loss(a, b, t=t, noise=noise), (x0, c))
    assert head.loss(x0, c, t=t, noise=noise).dtype == torch.float64
    bf = make().to(torch.bfloat16)
    loss = bf.loss(torch.randn(2, 1, 4, 4, dtype=torch.bfloat16), torch.randn(2, E, dtype=torch.bfloat16),
                   generator=gen(0))
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))


def test_sampling_argument_values_are_checked() -> None:
    head = make()
    c = torch.randn(2, E)
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected `steps` to be an int or None, got 2\.5\.$"):
        head.sample(c, steps=2.5)  # type: ignore[arg-type]
    for scale in (float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=r"^DiffusionHead: expected `guidance_scale` to be a finite number"):
            head.sample(c, steps=2, guidance_scale=scale)
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected `eta` to be a non-negative number, got nan\.$"):
        head.sample(c, steps=2, eta=float("nan"))
    for clip in ((1.0, -1.0), (float("nan"), 1.0), 1.0, (0.0, 1.0, 2.0)):
        with pytest.raises(ValueError, match=r"^DiffusionHead: expected `clip_x0` to be a \(low, high\) pair"):
            head.sample(c, steps=2, clip_x0=clip)  # type: ignore[arg-type]
    assert head.sample(c, steps=2, clip_x0=[-1.0, 1.0]).abs().max() <= 1.0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected `noise` on cpu like `cond`, got meta\.$"):
        head.sample(c, steps=2, noise=torch.randn(2, *head.target_shape, device="meta"))


def test_loss_refuses_an_empty_batch() -> None:
    head = make()
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected at least one sample in `x0` to average the loss over, got B=0\.$"):
        head.loss(torch.randn(0, *head.target_shape), torch.randn(0, E))
