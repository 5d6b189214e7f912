"""Accountability: the run's manifest, lineage and chaining, coverage audit, synthetic-vs-real check, cards."""
