"""ConditionalDecoder: zero-initialised modulation makes every block the identity."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ShapeError
from mmfuse.alignment import ConditionalDecoder
from mmfuse.alignment.generative._common import ModulatedConvBlock


def block_io(dec: ConditionalDecoder, cond: torch.Tensor):
    """(input, output) of every modulated block during one forward."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
             for b in dec.blocks]
    dec(cond)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("modulation", ["adaln_zero", "film"])
@pytest.mark.parametrize("shape", [(3, 8, 8), (16, 5)])
def test_blocks_start_as_identity(modulation: str, shape) -> None:
    torch.manual_seed(0)
    dec = ConditionalDecoder(6, shape, channels=8, blocks_per_stage=2, modulation=modulation)
    cond = torch.randn(4, 6) * 5
    seen = block_io(dec, cond)
    assert len(seen) == len(dec.blocks) == 6
    for x, y in seen:
        assert torch.equal(x, y)
    # Once the modulation is non-zero, the blocks act and the condition reaches them.
    with torch.no_grad():
        for b in dec.blocks:
            b.mod.weight.normal_(0, 0.5)
    for x, y in block_io(dec, cond):
        assert not torch.allclose(x, y)
    dec.reset_parameters()
    for x, y in block_io(dec, cond):
        assert torch.equal(x, y)


def naive_block(block: ModulatedConvBlock, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The block written out for one sample at a time (GroupNorm by hand), 2-D convolutions."""
    outs = []
    for i in range(h.shape[0]):
        p = block.mod(torch.nn.functional.silu(c[i]))
        x = h[i : i + 1]
        groups = block.norm.num_groups
        xg = x.reshape(1, groups, -1)
        mu = xg.mean(-1, keepdim=True)
        var = xg.var(-1, unbiased=False, keepdim=True)
        xn = ((xg - mu) / torch.sqrt(var + block.norm.eps)).reshape(x.shape)
        branch = lambda y: block.conv2(torch.nn.functional.silu(block.conv1(torch.nn.functional.silu(y))))  # noqa: E731
        C = x.shape[1]
        if block.modulation == "adaln_zero":
            shift, scale, gate = p[:C, None, None], p[C : 2 * C, None, None], p[2 * C :, None, None]
            outs.append(x + gate * branch(xn * (1 + scale) + shift))
        else:
            gamma, beta = p[:C, None, None], p[C:, None, None]
            outs.append(x + gamma * branch(xn) + beta)
    return torch.cat(outs)


@pytest.mark.parametrize("modulation", ["adaln_zero", "film"])
def test_block_matches_naive_formula(modulation: str) -> None:
    torch.manual_seed(0)
    block = ModulatedConvBlock(16, 5, spatial_dims=2, modulation=modulation)
    with torch.no_grad():
        block.mod.weight.normal_(0, 0.3)
        block.mod.bias.normal_(0, 0.3)
    h, c = torch.randn(3, 16, 4, 4), torch.randn(3, 5)
    torch.testing.assert_close(block(h, c), naive_block(block, h, c), atol=1e-5, rtol=1e-4)


def test_default_upsamples_and_shapes() -> None:
    assert ConditionalDecoder(4, (1, 8, 8)).num_upsamples == 2
    assert ConditionalDecoder(4, (1, 6, 10)).num_upsamples == 1
    assert ConditionalDecoder(4, (7, 3)).num_upsamples == 0
    dec = ConditionalDecoder(4, (2, 12, 4), channels=8, num_upsamples=2)
    assert dec.base == (3, 1)
    assert dec(torch.randn(5, 4)).shape == (5, 2, 12, 4)
    assert ConditionalDecoder(4, (20, 3), channels=8)(torch.randn(2, 4)).shape == (2, 20, 3)


def test_config_and_input_errors() -> None:
    with pytest.raises(ValueError, match=r"ConditionalDecoder: expected spatial sizes \(6, 6\) of `out_shape` divisible by 2\*\*num_upsamples=4, got \(1, 6, 6\)"):
        ConditionalDecoder(4, (1, 6, 6), num_upsamples=2)
    with pytest.raises(ValueError, match=r"ConditionalDecoder: unknown `modulation` 'adain'"):
        ConditionalDecoder(4, (1, 8, 8), modulation="adain")
    with pytest.raises(ValueError, match=r"ConditionalDecoder: expected `out_shape` to be a tuple of positive ints \(T, D\) or \(C, H, W\), got \(64,\)"):
        ConditionalDecoder(4, (64,))
    dec = ConditionalDecoder(4, (1, 8, 8), channels=8)
    with pytest.raises(ShapeError, match=r"ConditionalDecoder: expected `cond` of shape \(B, E\) with E=4, got \(2, 5\)"):
        dec(torch.randn(2, 5))


def test_learns_to_decode_conditions() -> None:
    """A few optimisation steps fit two conditions to two different images."""
    torch.manual_seed(0)
    dec = ConditionalDecoder(2, (1, 4, 4), channels=8)
    cond = torch.eye(2)
    target = torch.stack([torch.ones(1, 4, 4), -torch.ones(1, 4, 4)])
    target[0, 0, :2] = -1
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(200):
        loss = (dec(cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    assert any(b.mod.weight.abs().max() > 0 for b in dec.blocks)
