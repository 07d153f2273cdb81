"""Test-wide settings: no test uses the user's moddep cache unless it asks for one; and no
test may damage the machine it runs on (checked after every test)."""

from __future__ import annotations

import os
import stat
from typing import Iterator

import pytest

os.environ.setdefault("MODDEP_NO_CACHE", "1")


@pytest.fixture(autouse=True)
def _host_intact() -> Iterator[None]:
    yield
    st = os.stat("/dev/null")
    assert stat.S_ISCHR(st.st_mode), "this test replaced /dev/null with a regular file"
