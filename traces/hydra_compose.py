"""One way to compose a Hydra config folder, also from inside a running Hydra app.

Every command composes its configs with Hydra's compose API (``moe-sim``, ``moe-train``,
``moe-hw calibrate``). Hydra refuses to initialise a second time in one process, and a policy
that trains its predictor on first use (``checkpoint: auto``) composes ``conf/train`` from inside
a ``moe-sim`` job, where the app's own Hydra is initialised. :func:`compose_config` sets the
running app's Hydra aside while it composes and puts it back untouched afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moe_offload_lab.traces.errors import ConfigError


@contextmanager
def _app_hydra_set_aside() -> Iterator[None]:
    """The running app's GlobalHydra (if any) removed for the block, restored after it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    running = Singleton._instances.pop(GlobalHydra, None)  # noqa: SLF001 (Hydra keeps it there)
    try:
        yield
    finally:
        if running is None:
            Singleton._instances.pop(GlobalHydra, None)  # noqa: SLF001
        else:
            Singleton._instances[GlobalHydra] = running  # noqa: SLF001


def compose_config(folder: Path, overrides: Sequence[str], config_name: str = "config",
                   return_hydra_config: bool = False) -> Any:
    """``folder/<config_name>.yaml`` composed with ``overrides`` (a DictConfig); any Hydra or
    OmegaConf error becomes one ConfigError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with _app_hydra_set_aside(), \
                initialize_config_dir(config_dir=str(folder), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
