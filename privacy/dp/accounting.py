"""The privacy budget of a DP-SGD run: epsilon after a number of steps, and how many steps a budget allows.

The accountant is Opacus's PRV accountant (privacy random variables, Gopi et al. 2021): it composes
the subsampled Gaussian mechanism numerically and gives a near-exact epsilon (within its 0.01 error
bound), where RDP's conversion to (epsilon, delta) is an upper bound that is loose by 10-20% at these
settings: the same budget then buys less noise. RDP stays available (`accountant="rdp"`).
"""

from __future__ import annotations

from opacus.accountants.utils import create_accountant

ACCOUNTANTS = ("prv", "rdp")


def epsilon_after(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "prv") -> float:
    if steps == 0:
        return 0.0
    fresh = create_accountant(accountant)
    fresh.history = [(noise_multiplier, sample_rate, steps)]
    return float(fresh.get_epsilon(delta))


def steps_within_budget(noise_multiplier: float, sample_rate: float, delta: float, epsilon: float, upto: int,
                        accountant: str = "prv") -> int:
    """The most steps (at most `upto`) whose epsilon stays within `epsilon`; epsilon grows with the steps."""
    if epsilon_after(noise_multiplier, sample_rate, upto, delta, accountant) <= epsilon:
        return upto
    low, high = 0, upto  # epsilon(low) <= budget < epsilon(high)
    while high - low > 1:
        middle = (low + high) // 2
        if epsilon_after(noise_multiplier, sample_rate, middle, delta, accountant) <= epsilon:
            low = middle
        else:
            high = middle
    return low
