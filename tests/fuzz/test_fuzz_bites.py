"""The fuzz suite must catch a module that skips the library's boundary checks.

``UncheckedFusion`` concatenates and projects its features without validating anything, the
way a hand-written fusion often does. Registered as a target like any contract case, it must
make the fuzz engine fail (a deep torch error, a dtype mismatch inside ``F.linear``...), while
the engine's judge accepts the library's own errors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.cases.fusion_concat import DIMS, feature_inputs
from contract.registry import ContractCase
from contract.test_suite_bites import UncheckedFusion
from mmfuse import ShapeError
from mmfuse.fusion import ConcatFusion

from ._mutate import Hang, call_bounded, fuzz_one, judge_error
from ._targets import Target, module_target


def _case(build) -> ContractCase:
    return ContractCase(id="fuzz-bites", build=build, inputs=feature_inputs(DIMS),
                        out_shape=lambda b: (b, 5), features_arg="features",
                        presence_arg="present", empty_batch="empty")


def _campaign(target: Target) -> None:
    @settings(settings.get_profile("ci"), max_examples=40, deadline=None, database=None,
              report_multiple_bugs=False)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        fuzz_one(target, data)

    run()


def test_an_unchecked_module_is_caught() -> None:
    target = module_target(_case(lambda **dd: UncheckedFusion(DIMS, **dd)))
    with pytest.raises(AssertionError, match=r"deep error|outside mmfuse|non-finite|names"):
        _campaign(target)


def test_the_checked_twin_passes() -> None:
    _campaign(module_target(_case(lambda **dd: ConcatFusion(DIMS, 5, **dd))))


def test_judge_accepts_boundary_errors_and_refuses_the_rest() -> None:
    names = frozenset({"ConcatFusion"})
    f = ConcatFusion(DIMS)
    try:
        f({"image": torch.randn(2, 3)})
    except ShapeError as exc:
        judge_error(exc, names, "wrong size")  # the library's own error passes
    else:
        raise AssertionError("expected a ShapeError")
    try:
        torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 5))
    except RuntimeError as exc:
        with pytest.raises(AssertionError, match="deep error"):
            judge_error(exc, names, "torch")
    try:
        raise ValueError("something went wrong.")
    except ValueError as exc:
        with pytest.raises(AssertionError, match="names 'something went wrong.'|outside mmfuse"):
            judge_error(exc, names, "anonymous")


def test_a_hang_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from . import _mutate

    monkeypatch.setattr(_mutate, "PER_EXAMPLE_S", 0.2)
    release = threading.Event()
    try:
        with pytest.raises(Hang, match="still running"):
            call_bounded(lambda: release.wait(10), "a call that blocks")
    finally:
        release.set()
