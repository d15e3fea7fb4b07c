"""Differentially private fine-tuning of the risk classifier (DP-SGD with Opacus) on a team's own
labelled JSONL: data checks and privacy units (data.py), the privacy budget (accounting.py), the
training loop with checkpoints (train.py) and the privacy report (report.py)."""
