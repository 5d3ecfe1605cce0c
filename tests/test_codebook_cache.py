"""The packed-codebook caches codecs keep between encode calls."""

from __future__ import annotations

import weakref

import torch

from lumo_uti.codecs.codebook_cache import CodebookCache, StackedCodebookCache
from lumo_uti.ops import rvq_encode, vq_search


def test_codebook_cache_packs_once_and_again_for_another_tensor():
    torch.manual_seed(0)
    cache = CodebookCache(metric="cosine")
    first = torch.randn(64, 8)
    packed = cache(first)
    assert cache(first) is packed  # same tensor: no new packing
    second = torch.randn(64, 8)
    assert cache(second) is not packed
    x = torch.randn(50, 8)
    assert torch.equal(cache(second).search(x), vq_search(x, second, metric="cosine"))


def test_codebook_cache_sees_in_place_writes():
    torch.manual_seed(1)
    cache = CodebookCache()
    codebook = torch.randn(64, 8)
    x = torch.randn(50, 8)
    before = cache(codebook).search(x)
    codebook.copy_(codebook.flip(0))
    after = cache(codebook).search(x)
    assert torch.equal(after, vq_search(x, codebook))
    assert not torch.equal(after, before)


def test_stacked_cache_follows_each_stage():
    torch.manual_seed(2)
    stages = [torch.randn(32, 4) for _ in range(3)]
    cache = StackedCodebookCache()
    x = torch.randn(40, 4)
    packed = cache(stages, torch.device("cpu"))
    assert cache(stages, torch.device("cpu")) is packed
    assert torch.equal(packed.rvq_encode(x), rvq_encode(x, torch.stack(stages)))
    stages[1].mul_(-1.0)  # in place: a new version of one stage
    repacked = cache(stages, torch.device("cpu"))
    assert repacked is not packed
    assert torch.equal(repacked.rvq_encode(x), rvq_encode(x, torch.stack(stages)))
    stages[2] = torch.randn(32, 4)  # a new tensor for one stage
    assert torch.equal(cache(stages, torch.device("cpu")).rvq_encode(x), rvq_encode(x, torch.stack(stages)))


def test_stacked_cache_keeps_the_tensors_its_key_names_alive():
    # The key holds ids and storage addresses: a freed stage tensor could hand
    # both to its replacement (with version 0 again), so the cache keeps the
    # tensors it was built from until it is rebuilt.
    torch.manual_seed(3)
    stages = [torch.randn(32, 4) for _ in range(2)]
    cache = StackedCodebookCache()
    x = torch.randn(40, 4)
    cache(stages, torch.device("cpu"))
    old = weakref.ref(stages.pop())
    assert old() is not None
    stages.append(torch.randn(32, 4))
    assert torch.equal(cache(stages, torch.device("cpu")).rvq_encode(x), rvq_encode(x, torch.stack(stages)))
    assert old() is None  # rebuilt: the replaced tensor is released
