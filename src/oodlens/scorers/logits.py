"""The logit baselines (MSP, energy, max-logit); the maths lives in :mod:`oodlens.functional`."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..outputs import Outputs
from ..params import Interval
from .base import Scorer

__all__ = ["MSP", "Energy", "MaxLogit"]


class MSP(Scorer):
    r"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    .. math:: s(x) = \max_c \operatorname{softmax}(z / T)_c

    Args:
        temperature: softmax temperature T > 0 (default 1.0).

    Example:
        >>> import numpy as np, oodlens
        >>> out = oodlens.Outputs(logits=np.array([[4.0, 0.0], [0.1, 0.0]]))
        >>> MSP().fit(out).score(out).round(3)
        array([0.982, 0.525])
    """

    name = "msp"
    description = "max softmax probability (Hendrycks & Gimpel 2017)"
    parameter_constraints = {"temperature": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.msp(outputs.logits, self.temperature)


class Energy(Scorer):
    r"""Negative free energy (Liu et al., NeurIPS 2020).

    .. math:: s(x) = T \log \sum_c \exp(z_c / T)

    Args:
        temperature: T > 0 (default 1.0, as in the paper).
    """

    name = "energy"
    description = "negative free energy T*logsumexp(z/T) (Liu et al. 2020)"
    parameter_constraints = {"temperature": [Interval(float, 0, None, closed="neither")]}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.energy(outputs.logits, self.temperature)


class MaxLogit(Scorer):
    r"""Maximum logit (Hendrycks et al., ICML 2022).

    .. math:: s(x) = \max_c z_c
    """

    name = "max_logit"
    description = "maximum logit (Hendrycks et al. 2022)"

    def __init__(self) -> None:
        pass

    def _score(self, outputs: Outputs) -> np.ndarray:
        return F.max_logit(outputs.logits)
