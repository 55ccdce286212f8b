"""Property-based fuzzing of every module in the contract registry and the public functions.

Each example draws a batch size (0 included), a seed and one mutation of a target's valid
inputs (rank, sizes, batch, modality names, dtypes float16/bfloat16/float64/int/bool, module
dtype, NaN, non-contiguous and expanded tensors, meta tensors, wrong Python types, all-absent
rows and fully masked tokens holding NaN) and checks the outcome with
:func:`tests.fuzz._mutate.fuzz_one`: a result that keeps the library's promises, or the
library's own one-line boundary error, within a time bound.

Examples per target: ``MMFUSE_FUZZ_EXAMPLES`` (default 12), derandomised through the "ci"
hypothesis profile, so a run is reproducible; raise it locally for a longer campaign.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ._mutate import fuzz_one
from ._targets import Target, all_targets

EXAMPLES = int(os.environ.get("MMFUSE_FUZZ_EXAMPLES", "12"))
TARGETS = all_targets()


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
@settings(settings.get_profile("ci"), max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_fuzz(target: Target, data: st.DataObject) -> None:
    fuzz_one(target, data)


def test_every_contract_case_is_fuzzed() -> None:
    from contract.registry import all_cases

    fuzzed = {t.id for t in TARGETS}
    assert {c.id for c in all_cases()} <= fuzzed
