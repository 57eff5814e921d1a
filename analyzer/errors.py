"""Fatal errors only. Problems in peer bytes never raise: they become records."""

from __future__ import annotations


class AnalyzerError(Exception):
    """Base of every error that stops the analysis (CLI exit code 2)."""


class CaptureFormatError(AnalyzerError):
    """The input is not a capture we can read at all (not a pcap/pcapng, unreadable, empty)."""


class ConfigError(AnalyzerError):
    """Bad command-line option or configuration file."""
