"""DiffusionHead with variance_type="learned_range" (Improved DDPM): the doubled denoiser
output, the DDPM sampler against diffusers' DDPMScheduler(variance_type="learned_range"), the
hybrid loss, and the other samplers unchanged.

Tolerance against diffusers: 3e-5 relative to the sample's scale (diffusers keeps its schedule
in float32, the head in float64; the 10-step samplers differ by up to 9.1e-6 over
``benchmarks/peers.py``'s seeds, and the head's own float32 and float64 runs by 2.4e-6)."""

from __future__ import annotations

import pytest
import torch

from _peers import PRED, learned_range_head, scheduler_loop
from mmfuse import ShapeError
from mmfuse.alignment import DiffusionHead
from mmfuse.functional import alphas_cumprod, beta_schedule, ddpm_vlb_term, predict_start, v_target

E = 5
SHAPES = [((1, 4, 4), "mlp"), ((2, 8, 4), "unet"), ((6, 3), "unet"), ((5, 3), "mlp"), ((7,), "mlp")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(shape=(1, 4, 4), backbone="mlp", **kw) -> DiffusionHead:
    return learned_range_head(shape, backbone, cond_dim=E, **kw)


@pytest.mark.parametrize("shape, backbone", SHAPES)
def test_output_is_the_prediction_then_the_variance_values(shape, backbone) -> None:
    torch.manual_seed(0)
    fresh = DiffusionHead(shape, E, hidden_dim=16, num_blocks=1, num_steps=50, backbone=backbone,
                          unet_channels=8, variance_type="learned_range")
    x, t, c = torch.randn(3, *shape), torch.tensor([0, 10, 49]), torch.randn(3, E)
    out = fresh(x, t, c)
    assert out.shape == (3, 2 * shape[0], *shape[1:])
    assert not bool(out.any())  # output layer at zero: v = 0, the geometric mean of the two
    head = make(shape, backbone, num_steps=50)
    out = head(x, t, c)
    pred, var = out[:, :shape[0]], out[:, shape[0]:]
    assert bool(pred.any()) and bool(var.any())
    # the variance values are a function of the sample's own input only (batch independence)
    torch.testing.assert_close(head(x[1:2], t[1:2], c[1:2]), out[1:2])
    assert "variance_type='learned_range'" in repr(head)


def _pure_variance(head: DiffusionHead, value: float) -> DiffusionHead:
    """Make an MLP head's variance values the constant ``value`` (weights 0, bias value)."""
    n = head.numel
    with torch.no_grad():
        head.net.out.weight[n:] = 0.0
        head.net.out.bias[n:] = value
    return head


@pytest.mark.parametrize("v, fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_range_ends_are_the_fixed_variances(v, fixed) -> None:
    head = _pure_variance(make(), v)
    c = torch.randn(3, E, generator=gen(1))
    learned = head.sample(c, sampler="ddpm", steps=8, generator=gen(2))  # the head's default
    want = head.sample(c, sampler="ddpm", steps=8, generator=gen(2), variance_type=fixed)
    torch.testing.assert_close(learned, want, rtol=1e-5, atol=1e-6)
    other = "fixed_large" if fixed == "fixed_small" else "fixed_small"
    away = head.sample(c, sampler="ddpm", steps=8, generator=gen(2), variance_type=other)
    assert (away - want).abs().max() > 1e-3


def test_the_other_samplers_use_the_prediction_only() -> None:
    """A fixed-variance head with the prediction's half of the output layer samples the same
    with DDIM, DPM-Solver++ and guidance, and inverts the same."""
    head = make()
    fixed = DiffusionHead((1, 4, 4), E, hidden_dim=16, num_blocks=1, num_steps=100).eval()
    state = head.state_dict()
    n = head.numel
    state["net.out.weight"], state["net.out.bias"] = state["net.out.weight"][:n], state["net.out.bias"][:n]
    fixed.load_state_dict(state)
    c = torch.randn(3, E, generator=gen(1))
    for kw in ({"sampler": "ddim"}, {"sampler": "dpmpp_2m", "guidance_scale": 2.0},
               {"sampler": "ddim", "eta": 1.0}, {"sampler": "ddpm", "variance_type": "fixed_small"}):
        torch.testing.assert_close(head.sample(c, steps=6, generator=gen(2), **kw),
                                   fixed.sample(c, steps=6, generator=gen(2), **kw))
    x0 = torch.randn(3, 1, 4, 4, generator=gen(3))
    torch.testing.assert_close(head.ddim_invert(x0, c, steps=5), fixed.ddim_invert(x0, c, steps=5))


# ----------------------------------------------------------------------------- vs diffusers


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("shape, backbone", [((2, 4, 4), "mlp"), ((2, 8, 4), "unet"),
                                             ((6, 3), "unet"), ((7,), "mlp")])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_ddpm_sampler_matches_diffusers_learned_range(prediction, shape, backbone, scale) -> None:
    diffusers = pytest.importorskip("diffusers")
    head = make(shape, backbone, schedule="scaled_linear", beta_start=0.001, beta_end=0.03,
                prediction=prediction)
    cond = torch.randn(3, E, generator=gen(4))
    x_t = torch.randn(3, *shape, generator=gen(5))
    ts = head.timesteps(10)
    got = head.sample(cond, sampler="ddpm", steps=10, noise=x_t, guidance_scale=scale,
                      generator=gen(6))
    sched = diffusers.DDPMScheduler(num_train_timesteps=100,
                                    trained_betas=head.betas.float().tolist(),
                                    prediction_type=PRED[prediction], clip_sample=False,
                                    variance_type="learned_range")
    sched.set_timesteps(timesteps=ts)
    # the conditional pass's variance values beside the guided prediction, as the head does
    x = scheduler_loop(head, sched, cond, x_t, gen(6), guidance_scale=scale)
    torch.testing.assert_close(got, x, rtol=0, atol=3e-5 * float(x.abs().max()))


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("shape, backbone", [((1, 4, 4), "mlp"), ((6, 3), "unet")])
def test_hybrid_loss_matches_manual_computation(prediction, shape, backbone) -> None:
    head = make(shape, backbone, schedule="linear", prediction=prediction)
    x0 = torch.rand(5, *shape, generator=gen(1)) * 2 - 1
    c = torch.randn(5, E, generator=gen(2))
    t = torch.tensor([0, 1, 50, 98, 99])
    noise = torch.randn(5, *shape, generator=gen(3))
    abar = alphas_cumprod(beta_schedule("linear", 100)).float()
    ab = abar[t]
    abp = torch.tensor([1.0, *abar[t[1:] - 1].tolist()])
    bshape = (5,) + (1,) * len(shape)
    x_t = ab.sqrt().reshape(bshape) * x0 + (1 - ab).sqrt().reshape(bshape) * noise
    pred, var = head(x_t, t, c).chunk(2, dim=1)
    target = noise if prediction == "eps" else v_target(x0, noise, ab)
    mse = (pred - target).square().mean()
    x0_pred, _ = predict_start(x_t, pred, ab, prediction)
    vlb = ddpm_vlb_term(x0, x_t, x0_pred, ab, abp, var)
    vlb[0] = 0.0  # no decoder term at t = 0
    for weight, want in ((None, mse + 1e-3 * 100 * vlb.mean()), (0.0, mse),
                         (0.01, mse + 0.01 * 100 * vlb.mean())):
        got = head.loss(x0, c, t=t, noise=noise, vlb_weight=weight)
        torch.testing.assert_close(got, want)
    assert vlb[1:].min() > 0


def test_variance_term_trains_only_the_variance_values() -> None:
    """The mean's gradient is stopped in the vlb term: it reaches only the variance rows of
    the output layer, and L_simple only the prediction rows."""
    head = make()
    n = head.numel
    x0, c = torch.rand(8, 1, 4, 4, generator=gen(1)) * 2 - 1, torch.randn(8, E, generator=gen(2))
    t, noise = torch.randint(1, 100, (8,), generator=gen(3)), torch.randn(8, 1, 4, 4, generator=gen(4))
    w = head.net.out.weight
    g_simple = torch.autograd.grad(head.loss(x0, c, t=t, noise=noise, vlb_weight=0.0), w)[0]
    g_hybrid = torch.autograd.grad(head.loss(x0, c, t=t, noise=noise), w)[0]
    g_vlb = g_hybrid - g_simple
    assert float(g_simple[n:].abs().max()) == 0.0
    assert float(g_vlb[:n].abs().max()) < 1e-9 and float(g_vlb[n:].abs().max()) > 1e-6


def test_training_learns_the_variance() -> None:
    """On a fixed target, L_simple falls and the variance term falls with training."""
    torch.manual_seed(0)
    head = DiffusionHead(4, E, hidden_dim=32, num_blocks=2, num_steps=50,
                         variance_type="learned_range")
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    x0 = torch.tensor([[0.8, -0.6, 0.4, 0.0]]).repeat(64, 1)
    c = torch.ones(64, E)
    probe = {"t": torch.arange(1, 50).repeat(2)[:64], "noise": torch.randn(64, 4, generator=gen(9))}

    def terms() -> tuple[float, float]:
        with torch.no_grad():
            simple = head.loss(x0, c, vlb_weight=0.0, **probe).item()
            return simple, (head.loss(x0, c, **probe).item() - simple)

    first = terms()
    g = gen(0)
    for _ in range(200):
        loss = head.loss(x0, c, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = terms()
    assert last[0] < 0.5 * first[0] and last[1] < 0.5 * first[1]


# ----------------------------------------------------------------------------- checks


def test_errors() -> None:
    head = make()
    fixed = DiffusionHead(4, E, hidden_dim=8, num_blocks=1, num_steps=10)
    x0, c = torch.randn(2, 4), torch.randn(2, E)
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected no `vlb_weight` for "
                       r"variance_type='fixed_small' \(it weights the learned variance's term\), "
                       r"got 0\.001\.$"):
        fixed.loss(x0, c, vlb_weight=1e-3)
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected `vlb_weight`"):
        head.loss(torch.randn(2, 1, 4, 4), c, vlb_weight=-1.0)
    with pytest.raises(ValueError, match=r"^DiffusionHead: expected a head built with "
                       r"variance_type='learned_range' to sample with it, got a head with "
                       r"variance_type='fixed_small'\.$"):
        fixed.sample(c, sampler="ddpm", variance_type="learned_range")
    with pytest.raises(ValueError, match=r"^DiffusionHead: unknown `variance_type` 'learned'"):
        DiffusionHead(4, E, variance_type="learned")
    # a denoiser whose output misses the variance values is refused
    head.net.out = torch.nn.Linear(16, head.numel)
    head.net.out_shape = head.target_shape
    with pytest.raises(ShapeError, match=r"^DiffusionHead: expected `denoiser output` of shape "
                       r"\(B, C, H, W\) with C=2, H=4, W=4, B=2, got \(2, 1, 4, 4\)\.$"):
        head(torch.randn(2, 1, 4, 4), torch.tensor([1, 2]), c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_device_and_dtype_follow_the_inputs(device: str, dtype: torch.dtype) -> None:
    ref = make()
    head = make().to(device=device, dtype=dtype)
    c = torch.randn(3, E, generator=gen(1))
    want = ref.sample(c, sampler="ddpm", steps=5, generator=gen(2), guidance_scale=2.0)
    got = head.sample(c.to(device, dtype), sampler="ddpm", steps=5, generator=gen(2),
                      guidance_scale=2.0)
    assert got.dtype == dtype and got.device.type == device
    tol = 1e-4 if dtype == torch.float64 else 0.25
    torch.testing.assert_close(got.float().cpu(), want, atol=tol * (1 + want.abs().max().item()),
                               rtol=tol)
    x0 = torch.rand(4, 1, 4, 4, generator=gen(3)).to(device, dtype)
    loss = head.loss(x0, c[:3].repeat(2, 1)[:4].to(device, dtype), generator=gen(4))
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss.device.type == device and bool(torch.isfinite(loss))


@pytest.mark.parametrize("shape", [(6, 3), (2, 8, 4)])
def test_unet_stacks_its_output_blocks_along_dim_1(shape) -> None:
    # with the second block's output weights a copy of the first's, the two blocks along dim 1
    # are equal: the layout the MLP denoiser and diffusers' learned range read
    from mmfuse.alignment.generative._denoiser import UNetDenoiser

    torch.manual_seed(0)
    net = UNetDenoiser(shape, 8, 16, 1, 1, out_factor=2)
    n = shape[0] if len(shape) == 3 else shape[1]  # output channels per block
    with torch.no_grad():
        net.out.weight.normal_()
        net.out.weight[n:] = net.out.weight[:n]
        net.out.bias[n:] = net.out.bias[:n]
    out = net(torch.randn(2, *shape), torch.randn(2, 16))
    assert out.shape == (2, 2 * shape[0], *shape[1:])
    first, second = out[:, :shape[0]], out[:, shape[0]:]
    assert bool(first.any())
    torch.testing.assert_close(first, second)
