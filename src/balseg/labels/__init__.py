"""Label state of a run: the query/answer database and the simulated oracle."""

from balseg.labels.oracle import SimulatedOracle
from balseg.labels.store import Answer, LabelStore, LabelStoreError, Query

__all__ = ["Answer", "LabelStore", "LabelStoreError", "Query", "SimulatedOracle"]
