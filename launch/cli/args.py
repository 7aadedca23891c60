"""What several commands share: the exit status of a user error, config items, the head's address."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from rlhf_dist.errors import UserError

EXIT_USER_ERROR = 2


def address_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="the head's dashboard URL (default: $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)",
    )
    parser.add_argument("--token", default=None, help="Ray auth token (default: $RAY_AUTH_TOKEN)")


def split_config_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[FILE] [key=value ...]`` -> (file or None, overrides)."""
    files = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(files) > 1:
        raise UserError(
            f"expected at most one config file, got {files}; overrides look like key=value"
        )
    return (files[0] if files else None), overrides
