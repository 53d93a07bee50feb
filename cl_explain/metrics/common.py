"""What every metric module shares: the "not applicable" signal."""
from __future__ import annotations


class MetricNotApplicable(ValueError):
    """The metric is not defined for this explanation or pair (reported as NA, never as NaN)."""
