"""Forward hooks that capture what every MoE router of a model decided in one forward pass."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from moe_offload_lab.traces.record.adapters import read_output


class RouterCapture:
    """Hooks on a model's router modules; after a forward pass, per MoE layer ``l``:

    - ``indices[l]`` [batch * seq, k] the experts the block used (the router's own output),
    - ``weights[l]`` [batch * seq, k] their gate weights,
    - ``inputs[l]`` [batch * seq, H] the router's input, i.e. the hidden state entering the MoE
      block (kept only when ``keep_inputs``, for lookahead and features).

    Use as a context manager (hooks are removed on exit). :meth:`paused` turns capture off while
    the recorder itself calls routers (for lookahead).
    """

    def __init__(self, routers: list[Any], keep_inputs: bool) -> None:
        self.routers, self.keep_inputs = routers, keep_inputs
        n = len(routers)
        self.indices: list[Any] = [None] * n
        self.weights: list[Any] = [None] * n
        self.inputs: list[Any] = [None] * n
        self.calls = [0] * n
        self._handles: list[Any] = []
        self._active = True

    def _hook(self, layer: int):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            if not self._active:
                return
            weights, indices = read_output(output)
            self.indices[layer] = indices.detach()  # [batch * seq, k]
            self.weights[layer] = weights.detach()  # [batch * seq, k]
            if self.keep_inputs:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.inputs[layer] = hidden.detach().reshape(-1, hidden.shape[-1])  # [b * s, H]
            self.calls[layer] += 1

        return hook

    def clear(self) -> None:
        """Forget the previous forward pass."""
        n = len(self.routers)
        self.indices, self.weights, self.inputs = [None] * n, [None] * n, [None] * n
        self.calls = [0] * n

    def check_complete(self) -> None:
        """Raise RuntimeError unless every router ran exactly once since :meth:`clear`."""
        if any(c != 1 for c in self.calls):
            raise RuntimeError(f"router hooks fired {self.calls} times per MoE layer in one "
                               f"forward pass; expected once each")

    @contextmanager
    def paused(self):
        """Run router modules without recording them."""
        self._active = False
        try:
            yield
        finally:
            self._active = True

    def __enter__(self) -> RouterCapture:
        for layer, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(self._hook(layer), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
