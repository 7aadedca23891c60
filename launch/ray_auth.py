"""The Ray auth token a head with token authentication wants: --token, $RAY_AUTH_TOKEN or Ray's token file."""

from __future__ import annotations

import os
from pathlib import Path


def auth_headers(token: str | None = None) -> dict[str, str] | None:
    """The Bearer header for a head with token auth: --token, $RAY_AUTH_TOKEN or Ray's token file.
    (A head without auth ignores it.)"""
    token = token or os.environ.get("RAY_AUTH_TOKEN") or _token_file()
    return {"Authorization": f"Bearer {token}"} if token else None


def _token_file() -> str | None:
    """Ray's token file (RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), where a local head keeps its token."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip() if path.is_file() else None
