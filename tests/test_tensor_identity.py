"""TensorKey: "same values" decided from storage, layout and version counter, never by reading values."""
import gc

import pytest
import torch

from pyrod.tensor_identity import TensorKey


def test_same_tensor_matches_until_written_in_place():
    w = torch.arange(6.0)
    key = TensorKey(w)
    assert key.valid and key.tensor is w
    assert key.matches(w)
    w.add_(0.0)                                   # same values, but written: the key cannot know, so it misses
    assert not key.matches(w)
    key = TensorKey(w)
    w[2] = 7.0                                    # indexed assignment is an in-place write too
    assert not key.matches(w)


def test_write_through_a_view_or_the_base_invalidates():
    base = torch.zeros(10)
    w = base[2:8]
    key = TensorKey(w)
    base[0] = 1.0                                 # outside w's elements, but the shared counter moves: conservative
    assert not key.matches(w)
    key = TensorKey(w)
    w[:2].mul_(3.0)                               # through another view of the same base
    assert not key.matches(w)
    key = TensorKey(w)
    with torch.no_grad():
        w.detach().sub_(1.0)                      # detach() shares the version counter
    assert not key.matches(w)


def test_view_of_the_same_memory_matches_and_other_layouts_do_not():
    y = torch.randn(12)
    w = y[:8]
    key = TensorKey(w)
    assert key.matches(y[:8])                     # a new view object: same storage, offset, shape, stride
    assert key.matches(w.detach())
    assert key.matches(w.view(8))
    assert not key.matches(y[1:9])                # other offset
    assert not key.matches(y[:8].view(2, 4))      # other shape
    assert not key.matches(w.to(torch.float64))   # other dtype (and memory)
    assert not key.matches(w.numpy())             # not a tensor
    z = torch.randn(4, 4)
    col = TensorKey(z[:, 0])                      # offset 0, shape (4,), stride (4,)
    assert col.matches(z[:, 0]) and not col.matches(z[0, :])     # same offset and shape, other stride


def test_content_equal_copy_does_not_match():
    w = torch.randn(5)
    key = TensorKey(w)
    c = w.clone()
    assert torch.equal(c, w)
    assert not key.matches(c)


def test_key_keeps_its_tensor_alive_so_its_address_cannot_be_reused():
    w = torch.randn(1000)
    ptr = w.untyped_storage().data_ptr()
    key = TensorKey(w)
    del w
    gc.collect()
    # the key still holds the tensor: its memory is not freed, so no new allocation can land at that address
    assert key.tensor.untyped_storage().data_ptr() == ptr
    fresh = [torch.randn(1000) for _ in range(20)]
    assert all(t.untyped_storage().data_ptr() != ptr for t in fresh)
    assert not any(key.matches(t) for t in fresh)
    assert key.matches(key.tensor)


def test_tensors_without_version_or_storage_match_nothing():
    with torch.inference_mode():
        t = torch.randn(4)
    key = TensorKey(t)
    assert not key.valid and not key.matches(t)
    meta = torch.empty(4, device="meta")
    assert not TensorKey(meta).matches(meta)
    seen = []

    def f(x):
        k = TensorKey(x)                          # a torch.func wrapped tensor
        seen.append((k.valid, k.matches(x)))
        return x * 2

    torch.func.vmap(f)(torch.randn(3, 2))
    assert seen == [(False, False)]
    with pytest.raises(TypeError, match="torch.Tensor"):
        TensorKey([1.0, 2.0])
    assert "matches nothing" in repr(key) and "version=" in repr(TensorKey(torch.zeros(2)))
