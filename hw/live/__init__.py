"""Live mode: a Hugging Face MoE model whose own routers drive the offloading executor.

:mod:`hw.live.adapters` finds each architecture's MoE blocks and packs their routed experts,
:mod:`hw.live.store` holds those experts in the :class:`~hw.store.ExpertStore` layout (one host
buffer per expert) with the architecture's exact expert function, :mod:`hw.live.block` is the
offloading block that replaces each MoE block, and :mod:`hw.live.runner` frames every forward
call of the model as one executor step (:class:`LiveRunner`, :func:`run_live`).
"""

from moe_offload_lab.hw.live.runner import (
    LiveResult,
    LiveRunner,
    greedy_generate,
    load_live_model,
    run_live,
)

__all__ = ["LiveResult", "LiveRunner", "greedy_generate", "load_live_model", "run_live"]
