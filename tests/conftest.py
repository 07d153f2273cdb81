"""Test-wide settings: no test uses the user's moddep cache unless it asks for one."""

from __future__ import annotations

import os

os.environ.setdefault("MODDEP_NO_CACHE", "1")
