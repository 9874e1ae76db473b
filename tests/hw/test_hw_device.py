"""The CPU twin's streams, events, copy engine and cancellation; the store and slot pool."""

from __future__ import annotations

import pytest
import torch
from hw_testing import single_thread_torch, tiny_spec
from moe_offload_lab.hw.device import Device
from moe_offload_lab.hw.slots import SlotPool
from moe_offload_lab.hw.store import ExpertStore, expert_ffn, expert_numel, unpack
from moe_offload_lab.traces.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield from single_thread_torch()


def _pair(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n, dtype=torch.float32), torch.zeros(n)


def test_demand_copy_overtakes_a_queued_prefetch() -> None:
    dev = Device("cpu")
    src1, dst1 = _pair()
    src2, dst2 = _pair()
    pre = dev.prefetch.copy(dst1, src1)
    dem = dev.demand.copy(dst2, src2 * 2)
    assert not pre.end.query() and not dem.end.query()  # queued, nothing ran yet
    dev.compute.wait(dem.end)  # the compute stream waits for the demand copy only
    assert dem.end.query() and not pre.end.query()
    assert torch.equal(dst2, src2 * 2) and not dst1.any()
    dev.progress()  # the link works while a layer computes
    assert pre.end.query() and torch.equal(dst1, src1)
    assert dem.end.t <= pre.start.t
    assert dev.engine.order == [id(dst2), id(dst1)]


def test_priority_order_when_draining() -> None:
    dev = Device("cpu")
    pairs = [_pair() for _ in range(4)]
    dev.prefetch.copy(*reversed(pairs[0]))
    dev.prefetch.copy(*reversed(pairs[1]))
    dev.demand.copy(*reversed(pairs[2]))
    dev.demand.copy(*reversed(pairs[3]))
    dev.progress()
    dsts = [id(p[1]) for p in pairs]
    assert dev.engine.order == [dsts[2], dsts[3], dsts[0], dsts[1]]  # FIFO within a stream


def test_copies_per_layer_limit_and_stream_markers() -> None:
    dev = Device("cpu", twin_copies_per_layer=1)
    handles = [dev.prefetch.copy(*reversed(_pair())) for _ in range(3)]
    marker = dev.prefetch.record()
    assert not marker.query()
    dev.progress()
    assert [h.end.query() for h in handles] == [True, False, False]
    marker.synchronize()
    assert all(h.end.query() for h in handles) and marker.query()
    assert dev.compute.record().query()  # the compute stream is synchronous on the twin


def test_cancel_drops_a_queued_copy_and_counts_a_finished_one() -> None:
    dev = Device("cpu")
    src, dst = _pair()
    queued = dev.prefetch.copy(dst, src)
    assert queued.cancel() is False  # never crossed the link
    assert queued.end.query() and not dst.any()
    dev.progress()
    assert not dst.any() and dev.engine.copies_run == 0
    done = dev.prefetch.copy(dst, src)
    done.end.synchronize()
    assert done.cancel() is True and torch.equal(dst, src)


def test_slot_pool_cancellation_frees_the_slot_and_fences_order_reuse() -> None:
    spec = tiny_spec()
    dev = Device("cpu")
    store = ExpertStore(spec, dev)
    pool = SlotPool(spec, 2, store.numel, dev)
    slot = pool.start_fetch(3)
    handle = dev.prefetch.copy(pool.buffer[slot], store.buffer(3))
    pool.fences.write[slot] = handle.end
    assert pool.cache.free_slots() == 1 and 3 in pool.cache.in_flight
    handle.cancel()
    assert pool.remove(3) == slot
    assert pool.cache.free_slots() == 2 and pool.used() == 0
    assert pool.start_fetch(5) == slot  # the lowest free slot is reused
    pool.fences.wait_free(slot, dev.demand)  # the cancelled copy is done: no wait needed
    demand = dev.demand.copy(pool.buffer[slot], store.buffer(5))
    demand.end.synchronize()
    pool.complete_fetch(5)
    assert torch.equal(pool.weights(5), store.buffer(5))


def test_write_fence_makes_the_next_copy_wait() -> None:
    dev = Device("cpu")
    src1, dst = _pair()
    first = dev.prefetch.copy(dst, src1)
    dev.demand.wait(first.end)  # twin: the engine runs until the fence is reached
    assert first.end.query()
    second = dev.demand.copy(dst, src1 + 100)
    second.end.synchronize()
    assert torch.equal(dst, src1 + 100)


def test_store_one_contiguous_buffer_per_expert() -> None:
    spec = tiny_spec()
    dev = Device("cpu")
    store = ExpertStore(spec, dev, seed=3)
    assert store.host.shape == (spec.num_expert_keys, expert_numel(spec))
    assert store.bytes_per_expert == spec.expert_bytes  # fp32 spec: 4 bytes per parameter
    assert not store.pinned  # no CUDA here: pin_memory is not attempted
    buf = store.buffer(5)
    assert buf.is_contiguous()
    gate, up, down = unpack(buf, spec.hidden_size, spec.expert_intermediate_size, 3)
    assert gate.data_ptr() == buf.data_ptr()
    assert down.shape == (spec.hidden_size, spec.expert_intermediate_size)
    x = torch.randn(4, spec.hidden_size)
    manual = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(expert_ffn(x, buf, spec.hidden_size,
                                          spec.expert_intermediate_size, 3), manual)
    again = ExpertStore(spec, dev, seed=3)
    assert torch.equal(again.host, store.host)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("kind", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda_is_a_config_error(kind: str) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Device(kind)


@pytest.mark.parametrize("kind", ["tpu", "cuda:", "cuda:x", "CUDA"])
def test_unknown_device_kind(kind: str) -> None:
    with pytest.raises(ConfigError, match="'cpu', 'cuda' or 'cuda:N'"):
        Device(kind)
