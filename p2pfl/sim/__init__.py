"""Simulations: a whole federation of real peers in one process (``p2pfl sim``).

    summary = run_simulation(SimConfig(peers=20, rounds=30, partition="dirichlet:0.5"))
    summary["final_accuracy"], summary["models_agree"]

See ``docs/simulation.md`` for the options, the outputs and measured numbers.
"""

from ._config import DEFAULT_SECURE, SimConfig, build_federation, sim_identities
from ._report import Observations, Summary, models_agree
from ._run import run_simulation

__all__ = [
    "DEFAULT_SECURE",
    "Observations",
    "SimConfig",
    "Summary",
    "build_federation",
    "models_agree",
    "run_simulation",
    "sim_identities",
]
