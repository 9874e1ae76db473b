"""Live mode: a Hugging Face MoE model whose own routers drive the offloading executor.

:mod:`hw.live.adapters` finds the routers and the experts modules (transformers' experts
interface) and their weight layout, :mod:`hw.live.store` holds the routed experts in the
:class:`~hw.store.ExpertStore` layout (one host buffer per expert) with the interface's expert
function, :mod:`hw.live.interface` is live mode's function registered with transformers'
``ExpertsInterface``, and :mod:`hw.live.runner` frames every forward call of the model as one
executor step (:class:`LiveRunner`, :func:`run_live`).
"""

from moe_offload_lab.hw.live.runner import (
    LiveResult,
    LiveRunner,
    greedy_generate,
    load_live_model,
    run_live,
)

__all__ = ["LiveResult", "LiveRunner", "greedy_generate", "load_live_model", "run_live"]
