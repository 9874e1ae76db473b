"""One validation run builds the executor's expert store and model once (``CellRunner``) and
releases them when it returns; cells measured that way equal fresh ``measure_cell`` runs."""

from __future__ import annotations

import gc
import weakref

import moe_offload_lab.hw.replay as hw_replay
import pytest
import torch
from moe_offload_lab.hw.replay import ExpertStore
from moe_offload_lab.hw.validate.cells import CellRunner, measure_cell
from moe_offload_lab.hw.validate.matrix import ValidationConfig, make_trace, model_spec
from moe_offload_lab.hw.validate.run import validate

TINY = {"model": "tiny-moe-stdlib", "layers": 2,
        "model_overrides": {"hidden_size": 64, "expert_intermediate_size": 64},
        "trace": {"tokens": 24, "prompt_mean": 4, "decode_mean": 8}, "progress": False}


@pytest.fixture
def stores(monkeypatch):  # noqa: ANN001, ANN201
    """Every ExpertStore that hw.replay builds (the real class runs), as weak references."""
    built: list[weakref.ref] = []

    class Counting(ExpertStore):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            built.append(weakref.ref(self))

    monkeypatch.setattr(hw_replay, "ExpertStore", Counting)
    return built


def test_validate_builds_the_assets_once_and_releases_them(tmp_path, stores) -> None:
    cfg = ValidationConfig(**TINY, policies=["lru", "gate-lookahead"],
                           cache={"fractions": [0.25, 0.5]}, batches=[1, 4], device="cpu",
                           profile="h100-sxm", repeats=2, warmup=True, out=str(tmp_path))
    result = validate(cfg)
    assert len(result.table) == 8  # 8 cells x 2 repeats + a warm-up: 17 executor runs
    assert (result.table["hw_step_ms_mean"] > 0).all()
    assert len(stores) == 1
    gc.collect()
    assert stores[0]() is None  # nothing keeps the store alive once validate() returned


def test_cell_runner_equals_fresh_cells_and_rebuilds_for_another_seed(stores) -> None:
    cfg = ValidationConfig(**TINY, device="cpu")
    spec, trace = model_spec(cfg), make_trace(cfg, model_spec(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with CellRunner() as runner:
            shared = [runner.measure(spec, trace, "lru", 4, b, "cpu") for b in (1, 4, 1)]
            assert runner.builds == 1 and len(stores) == 1
            fresh = [measure_cell(spec, trace, "lru", 4, b, "cpu") for b in (1, 4, 1)]
            assert len(stores) == 4  # measure_cell alone builds its own every time
            for a, b in zip(shared, fresh, strict=True):
                untimed = [c for c in a.events.columns if c not in ("start_s", "end_s")]
                assert a.events[untimed].equals(b.events[untimed])
                assert a.summary["hit_rate"] == b.summary["hit_rate"]
            runner.measure(spec, trace, "lru", 4, 1, "cpu", seed=1)
            assert runner.builds == 2
            first = stores[0]
        assert runner.assets is None
        gc.collect()
        assert first() is None and stores[-1]() is None
    finally:
        torch.set_num_threads(threads)
