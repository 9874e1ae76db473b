"""Live mode's experts function, plugged into transformers' experts interface.

transformers 5.x dispatches every ``@use_experts_implementation`` experts module's forward
through ``ALL_EXPERTS_FUNCTIONS`` by the model's ``config._experts_implementation``
(``transformers.integrations.moe.ExpertsInterface``). :data:`NAME` is registered there once; a
:class:`~hw.live.runner.LiveRunner` binds each MoE layer's experts module to itself
(:func:`bind`) and switches the model with ``model.set_experts_implementation(NAME)``. The
function then hands ``(layer, hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``
to the runner, which returns the routed experts' output ``[T, H]``. Unbound modules (another model
switched to the same name) fall back to transformers' grouped kernel.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "moe_offload_lab"
_BINDING = "_moe_offload_lab_binding"


def offload_experts_forward(module: Any, hidden_states: torch.Tensor,
                            top_k_index: torch.Tensor, top_k_weights: torch.Tensor
                            ) -> torch.Tensor:
    """The registered experts function (see the module docstring)."""
    binding = getattr(module, _BINDING, None)
    if binding is None:
        from transformers.integrations.moe import grouped_mm_experts_forward

        return grouped_mm_experts_forward(module, hidden_states, top_k_index, top_k_weights)
    runner, layer = binding
    return runner.experts_call(layer, hidden_states, top_k_index, top_k_weights)


def register() -> None:
    """Register :data:`NAME` with transformers (idempotent)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(NAME, offload_experts_forward)


def bind(module: Any, runner: Any, layer: int) -> None:
    """Route ``module``'s forward (under :data:`NAME`) to ``runner`` as MoE layer ``layer``."""
    module.__dict__[_BINDING] = (runner, layer)  # a plain attribute, not a submodule


def unbind(module: Any) -> None:
    """Undo :func:`bind`."""
    module.__dict__.pop(_BINDING, None)
