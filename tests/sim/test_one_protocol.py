"""Every engine drives the one protocol (policies/protocol.py): the simulator, the offline replay
and the tests' delayed-copy replay call ``LayerProtocol.layer`` once per MoE layer, and none of
them calls the policy's per-layer methods itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.needs import consecutive_batches
from moe_offload_lab.policies.protocol import LayerProtocol
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.workload import static_batches
from sim_testing import HW, spec

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["sim/engine.py", "hw/executor.py", "policies/evaluation.py",
           "tests/policies/policy_testing.py"]


@pytest.fixture
def layer_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    original = LayerProtocol.layer

    def counting(self: LayerProtocol, ctx):  # noqa: ANN001, ANN202
        calls.append((ctx.step, ctx.layer))
        return original(self, ctx)

    monkeypatch.setattr(LayerProtocol, "layer", counting)
    return calls


def test_the_simulator_and_the_offline_replay_drive_it(layer_calls: list) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "policies"))
    from policy_testing import delayed_replay

    model = spec(num_layers=3, num_experts=8, top_k=2)
    trace = make_trace(model, 30, requests=2, seed=2, lookahead=(1,))
    sim_steps = len(static_batches(trace, 2))
    # the Python engine (the compiled one, sim.compiled, replays the same protocol in numba and
    # is checked against this engine row for row: tests/sim/test_compiled.py)
    Engine(model, trace, build_policy("gate-lookahead"), HW, 10, batch=2, engine="python").run()
    assert layer_calls == [(s, layer) for s in range(sim_steps) for layer in range(3)]
    layer_calls.clear()
    evaluate(trace, build_policy("presched"), 10, batch=2)
    replay_steps = len(consecutive_batches(trace.num_tokens, 2))
    assert layer_calls == [(s, layer) for s in range(replay_steps) for layer in range(3)]
    layer_calls.clear()
    delayed_replay(build_policy("lookahead-budgeted"), trace, 10, batch=2)
    assert len(layer_calls) == replay_steps * 3


@pytest.mark.parametrize("path", ENGINES)
def test_no_engine_writes_the_call_order_itself(path: str) -> None:
    source = (ROOT / path).read_text()
    for call in ("policy.on_layer(", "policy.prefetch(", "policy.place(", "policy.admit(",
                 "policy.evict(", "place_and_admit(", "plan_with_room(", "choose_victims("):
        assert call not in source, f"{path} calls {call} itself"
    assert "LayerProtocol" in source
