"""The offloading MoE block that replaces each MoE block of a live model.

Its forward does what the original block does, with the routed experts handed to the executor:

0. the runner says which rows of the block input are real tokens: all of them, except in the
   prefill of left-padded prompts, where only the ``t`` real rows go on (pad tokens never reach
   the router, the executor, the policy or the event log);
1. the original router module runs on the real rows of the block input (flattened ``[t, H]``)
   and gives ``(logits, weights [t, k], indices [t, k])``;
2. the shared experts (resident) run on every row, as in the original block, and the lookahead
   routers (later MoE layers' routers applied to the real rows, the ``ctx.lookahead`` columns
   prefetching policies read);
   everything since the previous MoE layer is logged as the layer's *other* compute;
3. :meth:`hw.executor.OffloadExecutor.moe_layer` computes the gate-weighted routed sum;
4. the shared term is added as the original block adds it, and the output gets the original
   shape (GPT-OSS also returns its router scores); pad rows get a zero routed term (they are
   masked out of every real token's attention, so their value does not matter).

The original block is kept outside the module tree (not moved by ``model.to``), so its expert
weights stay on the host, and :meth:`hw.live.runner.LiveRunner.remove` can put it back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from moe_offload_lab.hw.live.adapters import GPT_OSS, LiveArch, shared_output


class OffloadMoeBlock(torch.nn.Module):
    """Stands in for MoE block number ``layer`` (MoE layer index, not decoder block number)."""

    def __init__(self, runner: Any, arch: LiveArch, layer: int) -> None:
        super().__init__()
        original = arch.modules[layer]
        self.layer = layer
        self.router = arch.routers[layer]
        for name in ("shared_expert", "shared_expert_gate", "shared_experts"):
            if hasattr(original, name):  # resident: registered, so model.to moves them
                self.add_module(name, getattr(original, name))
        self.__dict__["_runner"] = runner  # plain attributes: not submodules
        self.__dict__["_arch"] = arch
        self.__dict__["_original"] = original

    def forward(self, hidden_states: torch.Tensor) -> Any:
        runner, arch = self._runner, self._arch
        shape = hidden_states.shape  # [B, S, H]
        flat = hidden_states.reshape(-1, shape[-1])  # [T, H]
        keep = runner.enter_layer(self.layer, shape)  # real rows [t] of a padded prefill, or None
        x = flat if keep is None else flat.index_select(0, keep)  # [t, H] the real tokens
        output = self.router(x)
        weights, indices = arch.adapter.read_output(output)  # [t, k], [t, k]
        shared = shared_output(arch, self._original, hidden_states, flat)  # every row, as before
        lookahead = runner.lookahead(self.layer, x)  # {d: [t, k]}
        ids = indices.detach().to("cpu").numpy()  # [t, k] the host reads the routing
        gates = weights.detach().to("cpu", torch.float32).numpy()  # [t, k]
        routed = runner.moe_layer(self.layer, x, ids, np.asarray(gates), lookahead)  # [t, H]
        if keep is not None:  # pad rows get zeros (masked out by attention, never logged)
            routed = flat.new_zeros(flat.shape).index_copy_(0, keep, routed)  # [T, H]
            weights = weights.new_zeros((flat.shape[0], weights.shape[1])).index_copy_(
                0, keep, weights)  # [T, k]
        if shared is not None and arch.model_type == "qwen2_moe":
            routed = routed + shared  # [T, H]: as Qwen2MoeSparseMoeBlock
        out = routed.reshape(shape)  # [B, S, H]
        if shared is not None and arch.model_type != "qwen2_moe":
            out = out + shared  # as DeepSeek's MoE: routed.view(shape) + shared(residuals)
        if arch.model_type == GPT_OSS:
            return out, weights  # GptOssMLP returns (hidden, router_scores)
        return out
