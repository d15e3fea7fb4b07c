"""The privacy budget of a DP-SGD run: epsilon after a number of steps, and how many steps a budget allows.

The accountant is Opacus's PRV accountant (privacy random variables, Gopi et al. 2021): it composes
the subsampled Gaussian mechanism numerically and gives a near-exact epsilon (within its 0.01 error
bound), where RDP's conversion to (epsilon, delta) is an upper bound that is loose by 10-20% at these
settings: the same budget then buys less noise. RDP stays available (`accountant="rdp"`).
"""

from __future__ import annotations

from opacus.accountants.utils import create_accountant, get_noise_multiplier

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


def noise_for_budget(epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str = "prv") -> float:
    """The noise multiplier that spends `epsilon` (at `delta`) in `epochs` passes at `sample_rate`: what
    Opacus's make_private_with_epsilon would pick. Under torchrun only rank 0 asks, for the whole job."""
    return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, epochs=epochs,
                                accountant=accountant)
