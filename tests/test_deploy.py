"""mmfuse.deploy: int8 dynamic quantization of every registry module, pruning, sparsity."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from contract.registry import ContractCase, all_cases
from mmfuse.deploy import Int8WeightConv, make_permanent, prune, quantize_dynamic, sparsity
from mmfuse.fusion import (
    AttentionFusion,
    GatedFusion,
    LowRankTensorFusion,
    TensorFusion,
)

# int8 (per-channel weights, activations quantized per batch) against float32, on the contract
# suite's random inputs: ||q - f|| / ||f|| stays under this for every module (measured: at most
# 0.027, for SpatioTemporalAttention).
REL_TOL = 0.06

PARAMETRISED = [c for c in all_cases() if any(True for _ in c.build().parameters())]


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).detach().norm() / ref.detach().norm().clamp_min(1e-12))


def _float_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _float_convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]


@pytest.mark.parametrize("case", PARAMETRISED, ids=[c.id for c in PARAMETRISED])
def test_every_parametrised_registry_module_quantizes(case: ContractCase) -> None:
    torch.manual_seed(0)
    model = case.build().eval()
    linears = len(_float_linears(model))
    convs = len(_float_convs(model))
    kwargs = case.inputs(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = case.output(model(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation warnings of torch.ao are silenced
        q = quantize_dynamic(model)
    assert _float_linears(q) == [] and _float_convs(q) == []
    assert sum(isinstance(m, nnqd.Linear) for m in q.modules()) == linears
    assert sum(isinstance(m, Int8WeightConv) for m in q.modules()) == convs
    assert _float_linears(model) != [] or linears == 0  # a copy: the float model is untouched
    with torch.no_grad():
        out = case.output(q(**kwargs))
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    if linears or convs:
        assert 0 < _rel_err(out, ref) <= REL_TOL
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_low_rank_factors_quantized_to_int8() -> None:
    torch.manual_seed(0)
    dims = {"image": 12, "text": 6}
    f = LowRankTensorFusion(dims, 8, 4).eval()
    q = quantize_dynamic(f)
    for m, d in dims.items():
        lin = q.factors[m]
        assert isinstance(lin, nnqd.Linear)
        assert lin.weight().dtype == torch.qint8
        # the dequantized factor is within half a quantization step of the float one
        w = f.factor(m)
        step = lin.weight().q_per_channel_scales().max()
        assert (q.factor(m) - w).abs().max() <= step / 2 + 1e-6
        assert q.factor(m).shape == (4, d + 1, 8)
    assert [type(p) for p in q.parameters()] == [nn.Parameter, nn.Parameter]  # weights, bias
    x = {"image": torch.randn(16, 12), "text": torch.randn(16, 6)}
    present = {"text": torch.rand(16) > 0.5}
    with torch.no_grad():
        assert _rel_err(q(x), f(x)) <= REL_TOL
        assert _rel_err(q(x, present), f(x, present)) <= REL_TOL


def test_quantized_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    dims = {"a": 5, "b": 3}
    q = quantize_dynamic(LowRankTensorFusion(dims, 4, 2))
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    other = quantize_dynamic(LowRankTensorFusion(dims, 4, 2))  # other random weights
    x = {"a": torch.randn(3, 5), "b": torch.randn(3, 3)}
    assert not torch.equal(other(x), q(x))
    other.load_state_dict(torch.load(buf, weights_only=False))
    torch.testing.assert_close(other(x), q(x), rtol=0, atol=0)


def test_float16_and_per_tensor_and_errors() -> None:
    torch.manual_seed(0)
    f = GatedFusion({"a": 6, "b": 4}, 5).eval()
    x = {"a": torch.randn(4, 6), "b": torch.randn(4, 4)}
    half = quantize_dynamic(f, torch.float16)
    assert _float_linears(half) == [] and _rel_err(half(x), f(x)) < 1e-3
    assert _rel_err(quantize_dynamic(f, per_channel=False)(x), f(x)) <= REL_TOL
    same = quantize_dynamic(f, inplace=True)
    assert same is f and _float_linears(f) == []
    with pytest.raises(ValueError, match=r"^quantize_dynamic: expected `dtype` to be one of "
                                         r"torch\.qint8, torch\.float16, got torch\.int8\.$"):
        quantize_dynamic(f, torch.int8)
    with pytest.raises(TypeError, match=r"^quantize_dynamic: expected `model` to be an "
                                        r"nn\.Module, got dict\.$"):
        quantize_dynamic({})  # type: ignore[arg-type]


def _digits_two_views() -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """scikit-learn's handwritten digits as two modalities: the top and bottom half."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (N, 8, 8)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    return {"top": x[:, :4].flatten(1), "bottom": x[:, 4:].flatten(1)}, y, 1400


@pytest.mark.parametrize("build", [
    lambda: LowRankTensorFusion({"top": 32, "bottom": 32}, 32, 8),
    lambda: AttentionFusion({"top": 32, "bottom": 32}, 32),
    lambda: TensorFusion({"top": 32, "bottom": 32}, 32),
    lambda: GatedFusion({"top": 32, "bottom": 32}, 32),
], ids=["LowRankTensorFusion", "AttentionFusion", "TensorFusion", "GatedFusion"])
def test_int8_keeps_the_accuracy_of_a_trained_classifier(build) -> None:
    """Real inputs: a fusion + linear head trained on the digits; int8 agrees with float32."""
    xs, y, n_train = _digits_two_views()
    torch.manual_seed(0)
    model = nn.ModuleDict({"fuse": build(), "head": nn.Linear(32, 10)})

    def logits(m: nn.ModuleDict, part: slice) -> torch.Tensor:
        return m["head"](torch.relu(m["fuse"]({k: v[part] for k, v in xs.items()})))

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train, test = slice(0, n_train), slice(n_train, None)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(logits(model, train), y[train]).backward()
        opt.step()
    model.eval()
    q = quantize_dynamic(model)
    assert _float_linears(q) == []
    with torch.no_grad():
        ref, out = logits(model, test), logits(q, test)
    acc_f = float((ref.argmax(1) == y[test]).float().mean())
    acc_q = float((out.argmax(1) == y[test]).float().mean())
    assert acc_f > 0.85  # trained
    assert abs(acc_q - acc_f) <= 0.01  # at most 1 point
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.98
    assert _rel_err(out, ref) <= 0.05


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 20),
                         nn.ReLU(), nn.Linear(20, 3))


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.7])
def test_global_pruning_reaches_the_sparsity_and_runs(amount: float) -> None:
    net = _net()
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total = sum(w.numel() for w in weights)
    keys = set(net.state_dict())
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    assert sparsity(net) == 0.0
    assert prune(net, amount) is net
    assert sparsity(net) == pytest.approx(round(amount * total) / total, abs=0)
    assert set(net.state_dict()) == keys  # permanent: no weight_orig / weight_mask left
    assert not any(net_m._forward_pre_hooks for net_m in net.modules())
    # global L1: what was zeroed is the smallest magnitudes across the layers
    kept = torch.cat([w.detach().abs().flatten() for w in
                      (m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))])
    threshold = magnitudes.kthvalue(round(amount * total)).values
    assert (kept[kept != 0] >= threshold).all()
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_layer_pruning_and_fine_tuning_keep_the_zeros() -> None:
    net = _net()
    prune(net, 0.5, scope="layer", permanent=False)
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert sparsity(m) == pytest.approx(0.5, abs=0.5 / m.weight.numel())
    assert {"0.weight_orig", "0.weight_mask"} <= set(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # fine-tuning with the hooks on: the pruned weights stay zero
        opt.zero_grad()
        net(torch.randn(4, 1, 8, 8)).square().sum().backward()
        opt.step()
    before = sparsity(net)
    assert make_permanent(net) is net
    assert sparsity(net) == before and "0.weight" in net.state_dict()
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_pruning_reaches_low_rank_factors_then_quantizes() -> None:
    torch.manual_seed(0)
    f = LowRankTensorFusion({"a": 10, "b": 6}, 8, 4).eval()
    prune(f, 0.7)
    assert sparsity(f) == pytest.approx(0.7, abs=0.01)
    assert all(sparsity(f.factors[m]) > 0 for m in ("a", "b"))
    x = {"a": torch.randn(3, 10), "b": torch.randn(3, 6)}
    q = quantize_dynamic(f)
    with torch.no_grad():
        assert _rel_err(q(x), f(x)) <= REL_TOL
    assert int((q.factors["a"].weight().int_repr() == 0).sum()) >= int(
        (f.factors["a"].weight == 0).sum())  # zeros stay zero in int8


def test_prune_and_sparsity_errors() -> None:
    net = _net()
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"^prune: expected `amount` to be a fraction in "
                                             r"\[0, 1\], got "):
            prune(net, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^prune: expected `scope` to be one of 'global', "
                                         r"'layer', got 'row'\.$"):
        prune(net, 0.5, scope="row")
    with pytest.raises(ValueError, match=r"^sparsity: expected `model` to hold a layer of type "
                                         r"Linear, Conv1d, Conv2d, Conv3d with a weight tensor, "
                                         r"found none\.$"):
        sparsity(nn.ReLU())
    with pytest.raises(ValueError, match=r"^prune: expected `model` to hold a layer of type "
                                         r"Linear with a weight tensor, found none\.$"):
        prune(quantize_dynamic(nn.Sequential(nn.Linear(3, 3))), 0.5, modules=nn.Linear)
    with pytest.raises(TypeError, match=r"^sparsity: expected `model` to be an nn\.Module"):
        sparsity(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("conv", [
    nn.Conv1d(3, 5, 3, padding=1), nn.Conv2d(2, 4, 3, stride=2, padding="valid"),
    nn.Conv2d(2, 4, 3, padding="same", padding_mode="reflect", bias=False),
    nn.Conv3d(2, 3, (1, 3, 3), padding=(0, 1, 1), groups=1), nn.Conv2d(4, 4, 3, groups=2),
], ids=["1d", "2d-valid-stride", "2d-same-reflect", "3d", "2d-groups"])
def test_int8_weight_conv_matches_the_dequantized_float_conv(conv: nn.Module) -> None:
    """Int8WeightConv equals the float convolution run with its dequantized weight, and the
    weight error is within half a quantization step per channel."""
    torch.manual_seed(0)
    q = Int8WeightConv(conv)
    w = conv.weight.detach()
    deq = q.weight_int8.float() * q.weight_scale
    assert q.weight_int8.dtype == torch.int8
    step = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / 127
    assert bool(((deq - w).abs() <= step / 2 + 1e-7).all())
    x = torch.randn(2, conv.in_channels, *([9] * (w.dim() - 2)))
    ref = copy.deepcopy(conv)
    with torch.no_grad():
        ref.weight.copy_(deq)
    torch.testing.assert_close(q(x), ref(x), atol=1e-5, rtol=1e-5)
    assert (q(x) - conv(x)).abs().max() < 0.05 * conv(x).abs().max()


def test_quantize_dynamic_stores_conv_weights_in_int8_and_shrinks_the_checkpoint() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.Flatten(),
                        nn.Linear(32 * 4 * 4, 10))
    q = quantize_dynamic(net)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) and type(m).__module__.startswith("torch.nn")
                   for m in q.modules())
    assert isinstance(q[0], Int8WeightConv)
    kept = quantize_dynamic(net, convs=False)
    assert isinstance(kept[0], nn.Conv2d)

    def size(m: nn.Module) -> int:
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        return buf.tell()

    assert size(q) < size(kept) < size(net)
    x = torch.randn(4, 4, 8, 8)
    assert (q(x) - net(x)).abs().max() < 0.05 * net(x).abs().max()
