"""Errors a user can cause (bad files, bad options). The CLI prints them as one line, no traceback."""

from __future__ import annotations


class InputError(Exception):
    """A problem with something the user gave us. The message names the thing and the problem,
    and ideally what to do next: ``"trace.pcap: truncated record at byte 1234 (file cut short?)"``.
    """


class FormatError(InputError):
    """A file is not in the format we expected (bad magic, broken JSON, unknown link type...)."""
