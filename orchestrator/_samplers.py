"""Build the Optuna sampler a config names (one builder per name, in a table)."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from searchspace import SamplerSpec


def _tpe(s: SamplerSpec) -> optuna.samplers.BaseSampler:
    # constant_liar keeps concurrent proposals apart while trials are still running.
    return optuna.samplers.TPESampler(
        seed=s.seed, n_startup_trials=s.startup_trials, multivariate=True, constant_liar=True
    )


def _nsga2(s: SamplerSpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=s.population_size)


def _gp(s: SamplerSpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup_trials)


def _random(s: SamplerSpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=s.seed)


SAMPLER_BUILDERS: dict[str, Callable[[SamplerSpec], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "nsga2": _nsga2,
    "gp": _gp,
    "random": _random,
}


def build_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    return SAMPLER_BUILDERS[spec.name](spec)
