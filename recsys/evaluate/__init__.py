"""`python -m recsys.evaluate`: the protocol's metrics, baselines, and scoring of any model."""
