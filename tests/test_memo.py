"""dfa.backbone.memo: the in-memory memo of frozen features (``cache.memo_gib``)."""
import torch

from dfa.backbone.dense import ViewFeatures
from dfa.backbone.memo import MemoExtractor, with_memo


class CountingExtractor:
    """A stand-in extractor: features are a deterministic function of the pixels."""
    logit_scale = 42.0

    def __init__(self):
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    def __call__(self, images, present=None):
        self.calls += 1
        b = images.shape[0]
        t = images.mean(dim=(1, 2, 3))                                     # (B,)
        tokens = t[:, None, None, None].expand(b, 2, 4, 3).clone()
        attn = torch.softmax(t[:, None, None, None] * torch.ones(b, 1, 4, 4), -1)
        cos = t[:, None, None].expand(b, 4, 2).clone()
        if present is not None:
            cos = cos * present[:, None, :].float()
        return ViewFeatures(tokens, attn, cos, cos[..., :0], (2, 2))


def _same(a: ViewFeatures, b: ViewFeatures) -> bool:
    return all(torch.equal(x, y) for x, y in zip((a.tokens, a.attn, a.cos, a.cos_bg), (b.tokens, b.attn, b.cos, b.cos_bg)))


def test_memo_returns_exactly_the_extractors_output_and_counts_hits():
    inner = CountingExtractor()
    memo = MemoExtractor(inner, 1 << 20)
    x = torch.randn(3, 3, 8, 8)
    p = torch.tensor([[True, False], [True, True], [False, True]])
    first = memo(x, p)
    again = memo(x.clone(), p.clone())                 # same bytes, other tensors: a hit
    assert inner.calls == 1 and (memo.hits, memo.misses) == (1, 1)
    assert _same(first, again) and _same(again, CountingExtractor()(x, p))
    y = x.clone()
    y[0, 0, 0, 0] += 1e-3                              # one pixel differs: a miss
    assert not _same(memo(y, p), first) and inner.calls == 2
    memo(x, ~p)                                        # other classes present: a miss
    memo(x)                                            # no present at all: a miss
    assert inner.calls == 4
    assert memo.logit_scale == 42.0 and memo.device == torch.device("cpu")   # the inner's attributes


def test_a_full_memo_keeps_what_it_has_and_stores_no_more():
    """A cycle larger than the memo (a table's tune, train, val) still hits on the entries kept
    first; an LRU memo would miss every time."""
    inner = CountingExtractor()
    xs = [torch.full((1, 3, 8, 8), float(i)) for i in range(3)]
    size = sum(t.numel() * t.element_size() for t in (lambda f: (f.tokens, f.attn, f.cos, f.cos_bg))(inner(xs[0])))
    inner.calls = 0
    memo = MemoExtractor(inner, 2 * size)              # room for two of the three
    for _ in range(3):                                 # three cycles over all three
        for x in xs:
            memo(x)
    assert memo.bytes == 2 * size
    assert inner.calls == 3 + 2                        # xs[0], xs[1] once; xs[2] every cycle
    assert (memo.hits, memo.misses) == (4, 5)
    tiny = MemoExtractor(CountingExtractor(), size - 1)     # an output larger than the memo is not kept
    tiny(xs[0]), tiny(xs[0])
    assert tiny.inner.calls == 2 and tiny.bytes == 0


def test_with_memo_zero_is_the_extractor_itself():
    inner = CountingExtractor()
    assert with_memo(inner, 0) is inner
    assert isinstance(with_memo(inner, 0.5), MemoExtractor)


def test_memo_copies_and_pickles_without_recursion():
    import copy
    import pickle
    memo = MemoExtractor(CountingExtractor(), 1 << 20)
    memo(torch.zeros(1, 3, 8, 8))
    clone = pickle.loads(pickle.dumps(memo))
    assert clone.hits == 0 and clone.misses == 1 and clone.logit_scale == 42.0
    assert copy.copy(memo).inner is memo.inner


class DecoderCounting(CountingExtractor):
    def __init__(self):
        super().__init__()
        self.decoder_calls = 0

    def decoder_tokens(self, images):
        self.decoder_calls += 1
        return images.mean(dim=1)[:, None, :4, :].flatten(2)[..., None].expand(-1, 2, -1, 3).clone(), (2, 2)


def test_memo_decoder_tokens_are_exact_keyed_apart_and_within_budget():
    inner = DecoderCounting()
    x = torch.randn(2, 3, 8, 8)
    memo = MemoExtractor(inner, 1 << 20)
    first, grid = memo.decoder_tokens(x)
    again, grid2 = memo.decoder_tokens(x.clone())
    assert inner.decoder_calls == 1 and torch.equal(first, again) and grid == grid2 == (2, 2)
    assert torch.equal(first, inner.decoder_tokens(x)[0])
    memo(x)                                            # the same pixels through __call__: its own key
    assert inner.calls == 1 and memo.misses == 2
    y = x.clone()
    y[1, 2, 0, 0] -= 1e-3
    assert not torch.equal(memo.decoder_tokens(y)[0], first)
    # A budget smaller than one output stores nothing and still returns the inner's tokens.
    small = MemoExtractor(DecoderCounting(), 8)
    a, _ = small.decoder_tokens(x)
    b, _ = small.decoder_tokens(x)
    assert small.inner.decoder_calls == 2 and small.bytes == 0 and torch.equal(a, b)
