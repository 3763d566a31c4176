"""The retrain loop."""
