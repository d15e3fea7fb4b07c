"""The privacy report in words: the model card of a DP fine-tuned artifact is the starting model's
card under a section stating the guarantee and how it was obtained."""

from __future__ import annotations

from pathlib import Path

_ROWS = (("epsilon", "epsilon spent"), ("epsilon_target", "epsilon budget"), ("delta", "delta"),
         ("noise_multiplier", "noise multiplier"), ("max_grad_norm", "clipping norm (per unit)"),
         ("sample_rate", "sampling rate (Poisson)"), ("steps", "steps"), ("planned_steps", "planned steps"),
         ("stopped", "stopped"), ("accountant", "accountant"), ("grad_sample_mode", "per-sample clipping"),
         ("privacy_unit", "privacy unit"), ("max_examples_per_user", "examples per user (cap)"),
         ("dataset_size", "dataset size (units)"), ("examples", "examples used"),
         ("duplicates_dropped", "duplicates dropped"), ("capped_examples", "examples over the cap dropped"),
         ("trainable_layers", "top layers trained (plus the head)"), ("base", "started from"))


def privacy_section(report: dict) -> str:
    table = "\n".join(f"| {label} | {report[key]} |" for key, label in _ROWS if report.get(key) is not None)
    if not report["private"]:
        claim = ("**No privacy guarantee**: trained with `--no-dp`, the non-private baseline. Do not ship "
                 "it where the training data must stay private.")
    else:
        claim = (f"({report['epsilon']}, {report['delta']:g})-differential privacy per {report['privacy_unit']} "
                 f"of the fine-tuning data (DP-SGD with Opacus, {report['accountant'].upper()} accountant): "
                 f"adding or removing one {report['privacy_unit']}'s data changes the probability of any "
                 "outcome of training by a factor of at most e^epsilon, plus delta. The starting model and "
                 "its calibration used no private data; the guarantee covers the fine-tuning data only.")
    return f"""## Differentially private fine-tuning

{claim}

| | |
|---|---|
{table}
"""


def write_dp_model_card(out: Path, base_dir: Path, report: dict) -> None:
    try:
        base_card = (base_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    except OSError:
        base_card = "(the starting model has no MODEL_CARD.md)\n"
    # The starting model's card, each heading one level down, under ours.
    demoted = "\n".join("#" + line if line.startswith("#") else line for line in base_card.splitlines())
    (out / "MODEL_CARD.md").write_text(
        f"# wardgate risk classifier, fine-tuned {'with' if report['private'] else 'without'} differential "
        f"privacy\n\n{privacy_section(report)}\n## Starting model: {report['base']}\n\n{demoted}\n",
        encoding="utf-8")
