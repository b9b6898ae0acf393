"""Seeded fault simulation of the gateway's service layer (in the style of TigerBeetle's VOPR).

``simulate(SimConfig(seed=…, ops=…))`` builds the real ``Gateway`` and ``Worker`` on a SQLite file
with a fake clock, a simulated wallet provider that injects faults by seed and a database that
fails units of work by seed, runs the operations, checks the invariants after every step and the
books at quiescent points, and answers a ``SimResult``. The same seed gives the same run: its
``digest`` is the fingerprint of the trace. ``bench/simulate.py`` is the long-running front end.
"""

from .checks import InvariantViolation, check_books
from .faults import FaultRates
from .runner import SimConfig, SimResult, Simulation, simulate

__all__ = [
    "FaultRates",
    "InvariantViolation",
    "SimConfig",
    "SimResult",
    "Simulation",
    "check_books",
    "simulate",
]
