"""The error every reward component raises when it fails or returns something unusable."""

from __future__ import annotations

from rlhf_dist.errors import UserError


class RewardError(UserError):
    """A reward component failed or returned something that cannot be a reward."""
