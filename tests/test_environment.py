"""CI promises the stock decoders: a test that would skip for want of them must fail there instead."""
from __future__ import annotations

import os
import shutil

import pytest


@pytest.mark.skipif(not os.environ.get("MATCHWIRE_REQUIRE_TSHARK"), reason="only where CI asks for tshark")
def test_tshark_is_installed_where_required() -> None:
    assert shutil.which("tshark"), ".ci/run installs tshark: the pcap tests need its dissectors"
