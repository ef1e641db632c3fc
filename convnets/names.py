"""Names shared by training, tracking and analysis: one place, no torch.

``analysis`` may import this module (and only this one from ``convnets``): it is the written
contract between what the runner records and what the tables read, not training code, so the
layering "analysis imports nothing of training" still holds.
"""

from __future__ import annotations

#: run profiles, most faithful first (tables prefer the first one present)
PROFILES = ("paper", "quick", "cpu", "smoke")
#: profiles whose runs are never evidence (their tables carry a SMOKE banner)
SMOKE_PROFILES = ("smoke",)
