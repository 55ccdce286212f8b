"""TextEncoder and ByteTokenizer: padding and masks change nothing, round trips, errors."""

from __future__ import annotations

import pytest
import torch

from mmfuse.encoders import ByteTokenizer, TextEncoder


def test_tokenizer_round_trip_and_layout() -> None:
    tok = ByteTokenizer(max_len=32)
    texts = ["héllo, 世界", "", "x"]
    ids, mask = tok(texts)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == (3, 2 + len(texts[0].encode("utf-8")))
    assert ids[:, 0].tolist() == [1, 1, 1]
    assert mask.sum(1).tolist() == [2 + len(t.encode("utf-8")) for t in texts]
    for i, t in enumerate(texts):
        assert tok.decode(ids[i].tolist()) == t
    assert (ids[~mask] == 0).all()
    cut = ByteTokenizer(max_len=5)(["abcdefgh"]).ids
    assert cut.tolist() == [[1, ord("a") + 3, ord("b") + 3, ord("c") + 3, 2]]
    with pytest.raises(TypeError, match=r"expected `texts` to be a sequence of str"):
        tok("not a list")


def _enc() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(12, width=16, depth=2, num_heads=4, max_len=32).eval()


def test_padding_does_not_change_a_text() -> None:
    enc = _enc()
    texts = ["a long sentence with many bytes", "short", "mid length"]
    ids, mask = enc.tokenize(texts)
    batched = enc(ids, mask)
    for i, t in enumerate(texts):
        alone_ids, alone_mask = enc.tokenize([t])
        assert bool(alone_mask.all())
        torch.testing.assert_close(enc(alone_ids, alone_mask)[0], batched[i], atol=1e-5, rtol=1e-5)


def test_masked_token_values_change_nothing_and_empty_rows_are_zero() -> None:
    enc = _enc()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 259, (4, 9), generator=gen)
    mask = torch.rand(4, 9, generator=gen) > 0.4
    mask[0] = False
    other = ids.where(mask, torch.randint(3, 259, (4, 9), generator=gen))
    out = enc(ids, mask)
    torch.testing.assert_close(enc(other, mask), out)
    torch.testing.assert_close(enc.forward_tokens(other, mask), enc.forward_tokens(ids, mask))
    torch.testing.assert_close(out[0], torch.zeros(12))
    assert (enc.forward_tokens(ids, mask)[~mask] == 0).all()


def test_compiled_with_mask_equals_eager() -> None:
    torch._dynamo.reset()
    enc = _enc()
    ids, mask = enc.tokenize(["one", "three four"])
    compiled = torch.compile(enc, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids, mask), enc(ids, mask))


def test_errors() -> None:
    enc = _enc()
    with pytest.raises(ValueError, match=r"TextEncoder: expected `ids` of length L <= max_len=32, "
                                         r"got 40"):
        enc(torch.ones(1, 40, dtype=torch.long))
    with pytest.raises(TypeError, match=r"expected `mask` to be a torch.bool tensor"):
        enc(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"expected `width` divisible by num_heads=3, got 16"):
        TextEncoder(8, width=16, num_heads=3)


def test_tokenize_refuses_non_sequences() -> None:
    enc = TextEncoder(16)
    for bad, name in ((None, "NoneType"), ("hi", "str"), (["a", 1], "list")):
        with pytest.raises(TypeError, match=rf"^ByteTokenizer: expected `texts` to be a sequence of str, got {name}\.$"):
            enc.tokenize(bad)  # type: ignore[arg-type]
