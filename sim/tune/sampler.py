"""A sampler seeded per trial, so workers sharing a study never sample the same sequence.

Every ``moe-tune run`` process builds its own sampler. Seeded once per process (as before), two
processes started with the same ``--seed`` on one study drew identical configurations: 13 trials
of two workers gave 6 distinct ones. :class:`TrialSeededSampler` instead seeds a fresh TPE sampler
for each trial from ``(seed, trial number)``: the storage hands every trial a unique number, so
workers differ without any user action (local processes, other machines, SLURM array tasks),
while one process on a fresh study stays reproducible from ``--seed``. TPE keeps no state between
trials besides its random generator (it reads the study's finished trials each time), so a fresh
sampler per trial samples what the shared one would with that seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.samplers import BaseSampler, TPESampler


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a study run with ``seed``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates each trial to ``factory(trial_seed(seed, trial.number))`` (default: TPE)."""

    def __init__(self, seed: int = 0,
                 factory: Callable[[int], BaseSampler] = lambda s: TPESampler(seed=s)) -> None:
        self.seed, self._factory = seed, factory
        self._by_trial: dict[int, BaseSampler] = {}
        # called with (study, frozen trial) first thing when a trial starts (Optuna calls
        # before_trial right after creating it): a worker claims its trial there (sim.tune.stale)
        self.on_start: Callable[[Any, Any], None] | None = None

    def _for(self, trial: Any) -> BaseSampler:
        sampler = self._by_trial.get(trial.number)
        if sampler is None:
            sampler = self._by_trial[trial.number] = self._factory(trial_seed(self.seed,
                                                                              trial.number))
        return sampler

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        """The trial's sampler's relative search space."""
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]
                        ) -> dict[str, Any]:
        """The trial's sampler's relative sample."""
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        """The trial's sampler's independent sample."""
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        """A trial starts: ``on_start`` runs, then its sampler is created here."""
        if self.on_start is not None:
            self.on_start(study, trial)
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any,
                    values: Sequence[float] | None) -> None:
        """A trial ended: its sampler is told, then dropped."""
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's generator comes from its number."""
