"""The papers' own words that the verdicts test, and the smallest effect each one means.

One place for them: each experiment's verdict carries its ``statement`` (quoted
verbatim, with where the words are), the report prints it above our test, and
docs/paper1.md, docs/paper2-depth.md and docs/overparam.md say how each test reads
it. A verdict tests only its statement; what the paper shows in figures we have not
seen is not put in the paper's mouth.
"""

from __future__ import annotations

__all__ = [
    "CLAIMED_GAIN_PP",
    "PAPER1_NOISE",
    "PAPER2_INIT",
    "PAPER2_OPTIMIZERS",
    "PAPER2_OVERPARAM",
    "PAPER2_RESILIENT",
    "PAPER2_TRAINED",
]

_HUH = "Huh et al. 2023"

PAPER1_NOISE = (
    '"when adding background noises to images, the rank of the CNN trained with gradient descent is '
    'affected far less compared with the rank of the data" (Zhang, Gao, Zou & Cao 2025, abstract)'
)
PAPER2_INIT = (
    '"Randomly initialized deep nets are biased to correspond to Gram matrices with a low effective '
    f'rank" ({_HUH}, project page, Observation 1)'
)
PAPER2_TRAINED = (
    '"Deep neural networks trained with gradient descent also learn to map data to simple embedding '
    f'with low effective rank" ({_HUH}, project page, Observation 2)'
)
PAPER2_OPTIMIZERS = (
    '"Deep neural networks trained with common and natural choices of optimizers also exhibit the '
    f'low-rank embedding bias" ({_HUH}, project page, Observation 3)'
)
PAPER2_RESILIENT = (
    '"the simplicity bias exists at both initialization and after training and is resilient to '
    f'hyper-parameters and learning methods" ({_HUH}, abstract)'
)
PAPER2_OVERPARAM = (
    '"linear over-parameterization of deep non-linear models can be used to induce low-rank bias, '
    'improving generalization performance on CIFAR and ImageNet without changing the modeling '
    f'capacity" ({_HUH}, abstract)'
)

CLAIMED_GAIN_PP = 1.0
"""The smallest test-accuracy gain, in percentage points, that PAPER2_OVERPARAM means: the
low end of the gains the paper reports for linearly over-parameterised CNNs on CIFAR-10 /
CIFAR-100 (about +1 to +3 pp; docs/overparam.md "The claimed gain"). A run whose
intervals all end below it has excluded the claimed gain ("does not hold"); one whose
intervals hold both 0 and this gain is "inconclusive"."""
