"""The shared validators: each message pinned, and no graph break under torch.compile."""

from __future__ import annotations

import pytest
import torch

from mmfuse import ModalityError, ShapeError
from mmfuse._checks import (
    check_batched,
    check_choice,
    check_dims,
    check_features,
    check_heads,
    check_mask,
    check_positive,
    check_presence,
    check_probability,
    check_same_device,
    check_tensor,
    format_shape,
    presence_matrix,
)

DIMS = {"image": 8, "text": 4}


def feats(b: int = 3, **over: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"image": torch.randn(b, 8), "text": torch.randn(b, 4)}
    out.update(over)
    return out


def test_errors_are_value_errors() -> None:
    assert issubclass(ShapeError, ValueError) and issubclass(ModalityError, ValueError)


def test_format_shape() -> None:
    assert format_shape((8, 512)) == "(8, 512)"
    assert format_shape((3,)) == "(3,)"
    assert format_shape(()) == "()"


def test_check_tensor_binds_and_checks_sizes() -> None:
    assert check_tensor(torch.zeros(2, 5, 7), "B N D", owner="M", arg="x", D=7) == {
        "B": 2, "N": 5, "D": 7}
    with pytest.raises(ShapeError, match=r"^M: expected `x` of shape \(B, N, D\) with D=6, got \(2, 5, 7\)\.$"):
        check_tensor(torch.zeros(2, 5, 7), "B N D", owner="M", arg="x", D=6)
    with pytest.raises(ShapeError, match=r"expected `x` of shape \(B, D\), got \(2, 5, 7\)"):
        check_tensor(torch.zeros(2, 5, 7), "B D", owner="M", arg="x")
    with pytest.raises(ShapeError, match=r"of shape \(T, T\), got \(2, 3\)"):  # repeated name
        check_tensor(torch.zeros(2, 3), "T T", owner="M", arg="x")
    with pytest.raises(TypeError, match="expected `x` to be a floating-point tensor, got torch.int64"):
        check_tensor(torch.zeros(2, 3, dtype=torch.long), "B D", owner="M", arg="x")
    with pytest.raises(TypeError, match="expected `m` to be a torch.bool tensor"):
        check_tensor(torch.zeros(2, 3), "B N", owner="M", arg="m", floating=False)
    with pytest.raises(TypeError, match="expected `x` to be a tensor of shape .*got list"):
        check_tensor([1.0], "B D", owner="M", arg="x")


def test_owner_module_name_used() -> None:
    class AttentionFusion(torch.nn.Module):
        pass

    with pytest.raises(ShapeError, match=r"^AttentionFusion: expected `text` of shape \(B, D\) with D=768, got \(8, 512\)\.$"):
        check_tensor(torch.zeros(8, 512), "B D", owner=AttentionFusion(), arg="text", D=768)


def test_check_features_ok_returns_batch() -> None:
    assert check_features(feats(5), DIMS, owner="F") == 5
    assert check_features({"text": torch.randn(2, 4)}, DIMS, owner="F", allow_missing=True) == 2
    assert check_features({"image": torch.randn(2, 3, 8)}, DIMS, owner="F", layout="B N D",
                          allow_missing=True) == 2


@pytest.mark.parametrize(
    ("features", "error", "pattern"),
    [
        (torch.randn(3, 8), TypeError, r"expected `features` to be a mapping .* got Tensor"),
        ({**feats(), "audio": torch.randn(3, 2)}, ModalityError,
         r"unknown modality \['audio'\] in `features`; expected names from \['image', 'text'\], got \['image', 'text', 'audio'\]"),
        ({"image": torch.randn(3, 8)}, ModalityError, r"missing modality \['text'\]"),
        (feats(text=torch.randn(3, 5)), ShapeError,
         r"expected `features\['text'\]` of shape \(B, D\) with D=4, B=3, got \(3, 5\)"),
        (feats(text=torch.randn(4, 4)), ShapeError,
         r"batch sizes disagree in `features`: expected `features\['text'\]` .* like `features\['image'\]`, got \(4, 4\)"),
        (feats(text=torch.randn(3, 1, 4)), ShapeError, r"got \(3, 1, 4\)"),
        (feats(text=torch.ones(3, 4, dtype=torch.int32)), TypeError, "floating-point tensor, got torch.int32"),
        (feats(text=[[0.0] * 4] * 3), TypeError, "got list"),
    ],
)
def test_check_features_errors(features: object, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        check_features(features, DIMS, owner="F")


def test_check_features_empty_mapping_even_when_missing_allowed() -> None:
    with pytest.raises(ModalityError, match="holds no modality"):
        check_features({}, DIMS, owner="F", allow_missing=True)


def test_check_features_devices_disagree() -> None:
    meta = {"image": torch.randn(3, 8), "text": torch.randn(3, 4, device="meta")}
    with pytest.raises(ValueError, match=r"different devices: expected `features\['text'\]` on cpu"):
        check_features(meta, DIMS, owner="F")


def test_check_presence() -> None:
    check_presence(None, DIMS, 3, owner="F")
    check_presence({"text": torch.ones(3, dtype=torch.bool)}, DIMS, 3, owner="F")
    with pytest.raises(TypeError, match=r"`present\['text'\]` to be a torch.bool tensor"):
        check_presence({"text": torch.ones(3)}, DIMS, 3, owner="F")
    with pytest.raises(ShapeError, match=r"`present\['text'\]` of shape \(B,\) with B=3, got \(4,\)"):
        check_presence({"text": torch.ones(4, dtype=torch.bool)}, DIMS, 3, owner="F")
    with pytest.raises(ModalityError, match=r"unknown modality \['x'\] in `present`"):
        check_presence({"x": torch.ones(3, dtype=torch.bool)}, DIMS, 3, owner="F")
    with pytest.raises(TypeError, match="expected `present` to be a mapping"):
        check_presence(torch.ones(3, dtype=torch.bool), DIMS, 3, owner="F")


def test_presence_matrix_missing_means_absent() -> None:
    p = presence_matrix({"image": torch.zeros(3, 8)}, None, ["image", "text"], 3, torch.device("cpu"))
    assert p.tolist() == [[True, False]] * 3
    q = presence_matrix(feats(), {"image": torch.tensor([True, False, True])}, ["image", "text"], 3,
                        torch.device("cpu"))
    assert q.tolist() == [[True, True], [False, True], [True, True]]


def test_check_mask() -> None:
    assert check_mask(None, owner="F", arg="m") is None
    assert check_mask(torch.ones(2, 5, dtype=torch.bool), owner="F", arg="m", B=2) == {"B": 2, "N": 5}
    with pytest.raises(ShapeError, match=r"`m` of shape \(B, N\) with B=2, N=4, got \(2, 5\)"):
        check_mask(torch.ones(2, 5, dtype=torch.bool), owner="F", arg="m", B=2, N=4)
    with pytest.raises(TypeError, match="torch.bool tensor"):
        check_mask(torch.ones(2, 5), owner="F", arg="m")


def test_check_same_device() -> None:
    check_same_device({"a": torch.zeros(1), "b": None, "c": torch.zeros(2)}, owner="F")
    with pytest.raises(ValueError, match="expected `b` on cpu like `a`, got meta"):
        check_same_device({"a": torch.zeros(1), "b": torch.zeros(1, device="meta")}, owner="F")


def test_configuration_checks() -> None:
    assert check_dims({"a": 3, "b": 4}, owner="F") == {"a": 3, "b": 4}
    for bad in ({}, [("a", 3)], None):
        with pytest.raises(TypeError, match="non-empty mapping"):
            check_dims(bad, owner="F")
    for value in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"expected `dims\['a'\]` to be a positive int"):
            check_dims({"a": value}, owner="F")
    with pytest.raises(TypeError, match="modality names"):
        check_dims({3: 4}, owner="F")
    check_positive(0.5, owner="F", arg="p")
    check_positive(0, owner="F", arg="p", allow_zero=True)
    with pytest.raises(ValueError, match="expected `p` to be a positive number, got 0"):
        check_positive(0, owner="F", arg="p")
    for allow_zero in (False, True):
        with pytest.raises(ValueError, match=r"^F: expected `t` to be a .* number, got nan\.$"):
            check_positive(float("nan"), owner="F", arg="t", allow_zero=allow_zero)
    with pytest.raises(ValueError, match=r"unknown `mode` 'x'; expected one of \['a', 'b'\]"):
        check_choice("x", ["a", "b"], owner="F", arg="mode")


def test_check_probability() -> None:
    for ok in (0, 0.0, 0.5, 0.999):
        check_probability(ok, owner="F", arg="dropout")
    check_probability(1, owner="F", arg="p", closed=True)
    for bad in (1, 1.0, -0.1, float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match=r"^F: expected `dropout` in \[0, 1\), got .*\.$"):
            check_probability(bad, owner="F", arg="dropout")
    for bad in (1.5, -1e-9, float("nan"), False):
        with pytest.raises(ValueError, match=r"^F: expected `p` in \[0, 1\], got .*\.$"):
            check_probability(bad, owner="F", arg="p", closed=True)
    with pytest.raises(ValueError, match=r"^F: expected `p` in \[0, 1\), got 1\.5\.$"):
        check_probability(1.5, owner="F", arg="p")


def test_check_heads() -> None:
    check_heads(8, 4, owner="F")
    check_heads(6, 6, owner="F", arg="out_dim")
    with pytest.raises(ValueError, match=r"^F: expected `num_heads` to divide dim=8, got 3\.$"):
        check_heads(8, 3, owner="F")
    with pytest.raises(ValueError, match=r"^F: expected `num_heads` to divide out_dim=6, got 4\.$"):
        check_heads(6, 4, owner="F", arg="out_dim")
    with pytest.raises(ValueError, match=r"^F: expected `out_dim` to be a positive int, got 0"):
        check_heads(0, 4, owner="F", arg="out_dim")
    with pytest.raises(ValueError, match=r"^F: expected `num_heads` to be a positive int, got 0"):
        check_heads(8, 0, owner="F")


def test_validators_do_not_break_the_graph() -> None:
    def f(features: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        b = check_features(features, DIMS, owner="F", allow_missing=True)
        check_presence(present, DIMS, b, owner="F")
        check_mask(torch.ones(b, 2, dtype=torch.bool), owner="F", arg="m", B=b)
        p = presence_matrix(features, present, list(DIMS), b, features["image"].device)
        return features["image"].sum(-1) * p[:, 1]

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    x, pres = feats(), {"text": torch.tensor([True, False, True])}
    torch.testing.assert_close(compiled(x, pres), f(x, pres))


def test_check_batched() -> None:
    assert check_batched(torch.zeros(3, 2, dtype=torch.long), owner="F", arg="x") == 3
    assert check_batched(torch.zeros(0), owner="F", arg="x") == 0
    for bad, got in ((torch.tensor(1.0), "a 0-d tensor"), ([1.0], "list"), (None, "NoneType")):
        with pytest.raises(TypeError, match=rf"^F: expected `x` to be a tensor of shape \(B, \.\.\.\), "
                           rf"got {got}\.$"):
            check_batched(bad, owner="F", arg="x")


# ----------------------------------------------------------------------------- check_inputs / check_size


def test_check_inputs_names_module_argument_expected_and_received() -> None:
    from mmfuse._checks import check_inputs
    from mmfuse.fusion import AttentionFusion

    f = AttentionFusion({"a": 4}, 6)
    msg = (r"^AttentionFusion: expected `features\['a'\]` of dtype torch.float32 on cpu like the "
           r"module's parameters, got torch.float64 on cpu\.$")
    with pytest.raises(TypeError, match=msg):
        f({"a": torch.randn(2, 4).double()})
    with pytest.raises(ValueError, match=r"^AttentionFusion: expected `features\['a'\]` of dtype "
                       r"torch.float32 on cpu like the module's parameters, got torch.float32 "
                       r"on meta\.$"):
        f({"a": torch.randn(2, 4, device="meta")})
    # a parameter-free caller compares its inputs with the first floating one
    with pytest.raises(TypeError, match=r"^g: expected `y` of dtype torch.float32 on cpu like "
                       r"`x`, got torch.bfloat16 on cpu\.$"):
        check_inputs(None, {"x": torch.zeros(2), "y": torch.zeros(2, dtype=torch.bfloat16)},
                     owner="g")
    # dtype=False checks devices only; masks and indices are checked for device only
    check_inputs(f, {"x": torch.zeros(2, dtype=torch.float64)}, dtype=False)
    check_inputs(f, {"m": torch.ones(2, dtype=torch.bool), "i": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"^AttentionFusion: expected `m` on cpu like the "
                       r"module's parameters, got meta\.$"):
        check_inputs(f, {"m": torch.ones(2, dtype=torch.bool, device="meta")})


def test_check_inputs_accepts_the_autocast_dtype() -> None:
    from mmfuse.fusion import AttentionFusion, LowRankTensorFusion

    for f in (AttentionFusion({"a": 4, "b": 3}, 6), LowRankTensorFusion({"a": 4, "b": 3}, 6, 2)):
        x = {"a": torch.randn(2, 4, dtype=torch.bfloat16), "b": torch.randn(2, 3)}
        with pytest.raises(TypeError, match="dtype torch.float32"):
            f(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = f(x)
        assert out.shape == (2, 6) and bool(torch.isfinite(out.float()).all())


def test_modalities_of_different_dtypes_are_refused_by_name() -> None:
    from mmfuse.fusion import GatedFusion

    f = GatedFusion({"a": 4, "b": 3}, 5).double()
    with pytest.raises(TypeError, match=r"^GatedFusion: expected `features\['b'\]` of dtype "
                       r"torch.float64"):
        f({"a": torch.randn(2, 4, dtype=torch.float64), "b": torch.randn(2, 3)})


def test_meta_input_into_cpu_buffers_raises() -> None:
    from mmfuse.encoders import AudioEncoder
    from mmfuse.perception import LogMelSpectrogram

    with pytest.raises(ValueError, match=r"^LogMelSpectrogram: expected `waveform` on cpu like "
                       r"the module's parameters, got meta\.$"):
        LogMelSpectrogram(16000)(torch.randn(2, 1600, device="meta"))
    with pytest.raises(ValueError, match=r"^AudioEncoder: expected `audio` on cpu"):
        AudioEncoder(8, sample_rate=16000)(torch.randn(2, 1600, device="meta"))
    # a meta module with meta inputs is shape inference, and stays allowed
    meta = LogMelSpectrogram(16000, device="meta")
    assert meta(torch.randn(2, 1600, device="meta")).device.type == "meta"


def test_check_inputs_compiles_without_graph_breaks() -> None:
    from mmfuse.fusion import AttentionFusion

    f = AttentionFusion({"a": 4, "b": 3}, 6)
    x = {"a": torch.randn(3, 4), "b": torch.randn(3, 3)}
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x))


def test_check_size_refuses_bools_floats_and_infinity() -> None:
    from mmfuse._checks import check_size

    assert check_size(3, owner="F", arg="n") == 3
    assert check_size(0, owner="F", arg="n", allow_zero=True) == 0
    for bad in (True, 2.0, 2.5, float("inf"), "3", None):
        with pytest.raises(TypeError, match=r"^F: expected `n` to be a positive int, got "):
            check_size(bad, owner="F", arg="n")
    with pytest.raises(ValueError, match=r"^F: expected `n` to be a positive int, got -1\.$"):
        check_size(-1, owner="F", arg="n")
    with pytest.raises(ValueError, match=r"^F: expected `t` to be a finite positive number, "
                       r"got inf\.$"):
        check_positive(float("inf"), owner="F", arg="t")
    check_positive(float("inf"), owner="F", arg="t", finite=False)


def test_check_broadcast_together_is_symint_safe() -> None:
    """A dynamic batch stays symbolic (sizes compared, never hashed); mismatches still raise."""
    from mmfuse._checks import check_broadcast_together

    class Draw(torch.nn.Module):
        def forward(self, mean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            check_broadcast_together({"mean": mean, "logvar": mean[:, :1], "noise": noise},
                                     owner="Draw")
            return mean + noise

    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(4, 3)
    program = torch.export.export(Draw(), (x, x), dynamic_shapes=({0: batch}, {0: batch}))
    y = torch.randn(7, 3)
    torch.testing.assert_close(program.module()(y, y), y + y)
    with pytest.raises(ShapeError, match=r"^Draw: expected `mean`, `logvar`, `noise` to broadcast "
                       r"together, got \(4, 3\), \(4, 1\), \(4, 2\)\.$"):
        Draw()(x, torch.randn(4, 2))
    compiled = torch.compile(Draw(), backend="eager", fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(y, y), y + y)
