"""ModelSpec: the shape of a Mixture-of-Experts model, as far as offloading cares.

A ModelSpec says how many MoE layers a model has, how many routed experts each holds, how many are
picked per token (top-k), and how many bytes one expert occupies. Everything the simulator and the
executor charge for copies and memory derives from it. Values for real models live in
``conf/model/*.yaml`` (see :mod:`traces.catalog`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from moe_offload_lab.traces.errors import ConfigError

_ATTENTION_KINDS = ("mha", "gqa", "mla")
NON_EXPERT_STATED_BYTES_PER_PARAM = 2  # the precision ``non_expert_bytes`` is stated at (bf16)
_STRING_FIELDS = ("name", "attention", "hf_architecture", "notes")
_NON_NEGATIVE_FIELDS = ("first_k_dense", "num_shared_experts", "shared_intermediate_size",
                        "dense_intermediate_size", "non_expert_bytes", "num_attention_heads",
                        "num_kv_heads", "head_dim", "vocab_size")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_finite(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        return False
    return 0 < value < math.inf  # false for NaN too


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a MoE model.

    Layer numbering: ``num_layers`` counts every transformer block; the MoE blocks are the ones
    listed by :attr:`moe_layer_indices`. Traces and policies index MoE layers densely as
    ``0 .. num_moe_layers - 1`` (the i-th MoE block), never by transformer block number.
    """

    name: str
    num_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    expert_intermediate_size: int
    first_k_dense: int = 0
    moe_layer_step: int = 1
    num_shared_experts: int = 0
    shared_intermediate_size: int = 0
    dense_intermediate_size: int = 0
    expert_matrices: int = 3
    expert_bias: bool = False
    expert_bytes_per_param: float = 2.0
    non_expert_bytes: int = 0
    non_expert_bytes_per_param: float = 0.0
    attention: str = "gqa"
    num_attention_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    hf_architecture: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _STRING_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"model {self.name!r}: {name} must be a string, "
                                  f"got {getattr(self, name)!r}")
        positive = ("num_layers", "num_experts", "top_k", "hidden_size", "expert_intermediate_size",
                    "moe_layer_step")
        for name in positive:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"model {self.name!r}: {name} must be a positive integer, "
                                  f"got {value!r}")
        for name in _NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"model {self.name!r}: {name} must be a non-negative integer, "
                                  f"got {value!r}")
        if not isinstance(self.expert_bias, bool):
            raise ConfigError(f"model {self.name!r}: expert_bias must be true or false")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"model {self.name!r}: extra must be a mapping")
        bytes_per_param = self.expert_bytes_per_param
        if not _is_positive_finite(bytes_per_param):
            raise ConfigError(f"model {self.name!r}: expert_bytes_per_param must be a positive "
                              f"finite number, got {bytes_per_param!r}")
        nebpp = self.non_expert_bytes_per_param
        if nebpp != 0 and not _is_positive_finite(nebpp):
            raise ConfigError(f"model {self.name!r}: non_expert_bytes_per_param must be 0 or a "
                              f"positive finite number, got {nebpp!r}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"model {self.name!r}: top_k={self.top_k} exceeds "
                              f"num_experts={self.num_experts}")
        if self.num_experts > 32767:
            raise ConfigError(f"model {self.name!r}: num_experts={self.num_experts} exceeds "
                              f"32767, the most a trace's int16 expert ids can address")
        if self.num_layers > 32767:  # keeps a damaged trace's metadata from exhausting memory
            raise ConfigError(f"model {self.name!r}: num_layers={self.num_layers} exceeds 32767, "
                              f"the most supported")
        if not 0 <= self.first_k_dense < self.num_layers:
            raise ConfigError(f"model {self.name!r}: first_k_dense must be in [0, num_layers)")
        if not _is_int(self.expert_matrices) or self.expert_matrices not in (2, 3):
            raise ConfigError(f"model {self.name!r}: expert_matrices must be 2 (plain FFN) "
                              f"or 3 (gated)")
        if self.attention not in _ATTENTION_KINDS:
            raise ConfigError(f"model {self.name!r}: attention must be one of {_ATTENTION_KINDS}")
        if self.num_moe_layers == 0:
            raise ConfigError(f"model {self.name!r}: no MoE layer (num_layers={self.num_layers}, "
                              f"first_k_dense={self.first_k_dense}, "
                              f"moe_layer_step={self.moe_layer_step})")

    # ---- layers -------------------------------------------------------------------------------
    @property
    def moe_layer_indices(self) -> tuple[int, ...]:
        """Transformer block numbers of the MoE blocks, in order."""
        start, step = self.first_k_dense, self.moe_layer_step
        return tuple(i for i in range(start, self.num_layers) if (i - start) % step == step - 1)

    @property
    def num_moe_layers(self) -> int:
        """Number of MoE blocks (the ``layers`` axis of every trace array)."""
        return len(self.moe_layer_indices)

    @property
    def num_expert_keys(self) -> int:
        """Number of distinct (MoE layer, routed expert) pairs: the universe a cache draws from."""
        return self.num_moe_layers * self.num_experts

    # ---- bytes --------------------------------------------------------------------------------
    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (weights plus biases when the model has them)."""
        h, i = self.hidden_size, self.expert_intermediate_size
        weights = self.expert_matrices * h * i
        # Gated experts carry a bias per gate and up row and per down output; plain FFNs one per
        # hidden and output unit.
        biases = ((self.expert_matrices - 1) * i + h) if self.expert_bias else 0
        return weights + biases

    @property
    def expert_bytes(self) -> int:
        """Bytes of one routed expert at ``expert_bytes_per_param`` (rounded up to whole bytes)."""
        return math.ceil(self.expert_params * self.expert_bytes_per_param)

    @property
    def routed_expert_bytes(self) -> int:
        """Bytes of all routed experts of all MoE layers."""
        return self.expert_bytes * self.num_expert_keys

    @property
    def shared_expert_bytes(self) -> int:
        """Bytes of one MoE layer's shared experts (always resident; 0 when there are none)."""
        params = (self.num_shared_experts * self.expert_matrices * self.hidden_size
                  * self.shared_intermediate_size)
        return math.ceil(params * self.expert_bytes_per_param)

    @property
    def non_expert_params(self) -> int:
        """Parameters of the non-expert weights (attention, embeddings, norms, routers, dense
        FFNs): ``non_expert_bytes`` is stated at bf16, 2 bytes per parameter, as every catalog
        entry states it."""
        return self.non_expert_bytes // NON_EXPERT_STATED_BYTES_PER_PARAM

    @property
    def resident_non_expert_bytes(self) -> int:
        """Bytes the non-expert weights occupy as served: ``non_expert_bytes`` as stated, or at
        ``non_expert_bytes_per_param`` when set (0.5625 for 4-bit HQQ attention with group-64
        scales), independently of the experts' precision."""
        if not self.non_expert_bytes_per_param:
            return self.non_expert_bytes
        return math.ceil(self.non_expert_params * self.non_expert_bytes_per_param)

    def expert_flops(self, tokens: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of one routed expert applied to ``tokens`` tokens."""
        return 2 * self.expert_matrices * self.hidden_size * self.expert_intermediate_size * tokens

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON- and YAML-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build from a dict such as a YAML file or a Hydra node; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model spec has unknown field(s): {', '.join(unknown)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"model spec lacks required field(s): {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a wrongly typed value reaching an arithmetic check
            raise ConfigError(f"model spec {data.get('name', '?')!r}: {exc}") from None

    def mismatches(self, other: ModelSpec) -> list[str]:
        """Fields on which a trace of ``other`` cannot stand for this model: the routing shape
        (MoE layers, experts, top-k, shared experts) and the expert shape. Names, quantisation
        and non-expert sizes may differ. Each entry reads ``field: mine != other``."""
        fields = ("num_moe_layers", "num_experts", "top_k", "num_shared_experts",
                  "hidden_size", "expert_intermediate_size", "expert_matrices")
        return [f"{f}: {getattr(self, f)} != {getattr(other, f)}" for f in fields
                if getattr(self, f) != getattr(other, f)]

    def with_overrides(self, **changes: Any) -> ModelSpec:
        """Copy with some fields changed, for example ``expert_bytes_per_param=0.5`` for 4-bit."""
        return ModelSpec.from_dict({**self.to_dict(), **changes})
