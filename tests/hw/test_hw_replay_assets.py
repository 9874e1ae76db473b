"""Replay assets (``hw.replay.build_assets``): runs that share one expert store and model give
the same results as runs that build their own, leave the assets untouched, and refuse assets
of another spec, seed or rope setting."""

from __future__ import annotations

import pytest
import torch
from hw_testing import CAPACITY, single_thread_torch, tiny_spec, tiny_trace
from moe_offload_lab.hw.replay import ReplayAssets, build_assets, run_replay
from moe_offload_lab.traces.errors import ConfigError

POLICIES = ["lru", "fifo", "gate-lookahead", "lookahead-budgeted"]  # on-demand and prefetching


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield from single_thread_torch()


@pytest.fixture(scope="module")
def assets() -> ReplayAssets:
    return build_assets(tiny_spec(), "cpu", seed=0)


def _tensors(assets: ReplayAssets) -> list[torch.Tensor]:
    """Every tensor a run reads from the assets."""
    out = [assets.store.host, assets.model.embed, assets.model.final_norm]
    for block in assets.model.blocks:
        for value in block.values():
            out.append(value[0] if isinstance(value, tuple) else value)
    return out


def _counts(events) -> dict[tuple[str, str], int]:  # noqa: ANN001
    sub = events[events["kind"].isin(["compute", "copy"])]
    return sub.groupby(["kind", "detail"], observed=True).size().to_dict()


def _same(fresh, reused) -> None:  # noqa: ANN001
    assert torch.equal(fresh.hidden, reused.hidden)
    assert _counts(fresh.events) == _counts(reused.events)
    untimed = [c for c in fresh.events.columns if c not in ("start_s", "end_s")]
    pd_equal = fresh.events[untimed].reset_index(drop=True).equals(
        reused.events[untimed].reset_index(drop=True))
    assert pd_equal
    assert fresh.stats == reused.stats
    assert [r.tolist() for r in fresh.schedule] == [r.tolist() for r in reused.schedule]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", POLICIES)
def test_reused_assets_equal_fresh_ones(assets: ReplayAssets, name: str, batch: int) -> None:
    before = [t.clone() for t in _tensors(assets)]
    kwargs = {"capacity_slots": CAPACITY, "batch": batch, "twin_copies_per_layer": 1}
    fresh = run_replay(tiny_spec(), tiny_trace(), name, **kwargs)
    first = run_replay(tiny_spec(), tiny_trace(), name, assets=assets, **kwargs)
    again = run_replay(tiny_spec(), tiny_trace(), name, assets=assets, **kwargs)  # after a run
    assert first.hidden.dtype == torch.float32
    _same(fresh, first)
    _same(fresh, again)
    assert fresh.summary["expert_bytes"] == first.summary["expert_bytes"]
    assert all(torch.equal(a, b) for a, b in zip(before, _tensors(assets), strict=True))


def test_all_resident_with_reused_assets(assets: ReplayAssets) -> None:
    fresh = run_replay(tiny_spec(), tiny_trace(), None, resident_all=True, batch=2)
    reused = run_replay(tiny_spec(), tiny_trace(), None, resident_all=True, batch=2,
                        assets=assets)
    _same(fresh, reused)
    lru = run_replay(tiny_spec(), tiny_trace(), "lru", capacity_slots=CAPACITY, batch=2,
                     assets=assets)
    assert torch.equal(lru.hidden, reused.hidden)  # the bitwise property holds with reuse


def test_assets_record_what_they_were_built_for(assets: ReplayAssets) -> None:
    assert assets.spec == tiny_spec() and assets.device == "cpu" and assets.seed == 0
    assert assets.rope is True and assets.dtype == torch.float32
    assert assets.store.num_keys == tiny_spec().num_expert_keys
    assert assets.matches(tiny_spec(), "cpu", 0) and not assets.matches(tiny_spec(), "cpu", 1)


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 1}, "seed 1 != 0"),
    ({"rope": False}, "rope False != True"),
    ({"spec": tiny_spec().with_overrides(expert_intermediate_size=40)},
     "expert_intermediate_size: 40 != 48"),
    ({"spec": tiny_spec().with_overrides(num_attention_heads=8, num_kv_heads=4, head_dim=4)},
     "num_attention_heads: 8 != 4"),
])
def test_mismatched_assets_are_a_config_error(assets: ReplayAssets, change: dict,
                                              message: str) -> None:
    spec = change.pop("spec", tiny_spec())
    with pytest.raises(ConfigError, match="replay assets") as info:
        run_replay(spec, tiny_trace(), "lru", capacity_slots=CAPACITY, assets=assets, **change)
    assert message in str(info.value)


def test_assets_of_another_device_are_a_config_error(assets: ReplayAssets) -> None:
    with pytest.raises(ConfigError, match="device 'cuda' != 'cpu'"):
        assets.check(tiny_spec(), "cuda", 0)
    with pytest.raises(ConfigError, match="dtype"):
        assets.check(tiny_spec(), "cpu", 0, dtype=torch.bfloat16)
