"""The classifier's labels and its error, without importing torch: the policy schema validates
thresholds against the labels, and the gateway catches the error without loading a model."""

CATEGORIES = ("sexual", "sexual_minors", "hate", "harassment", "self_harm", "violence", "illegal", "jailbreak")
LABELS = ("unsafe", *CATEGORIES)


class ClassifierError(Exception):
    """The classifier cannot be built, loaded or used; worded for the operator."""
