"""fwdaudit: offline auditor of mail-proxy client-identity forwarding in packet captures."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
