"""CI promises the stock decoders: a test that would skip for want of them must fail there instead."""
from __future__ import annotations

import os
import shutil

import pytest


@pytest.mark.skipif(not os.environ.get("MATCHWIRE_REQUIRE_TSHARK"), reason="only where CI asks for tshark")
def test_tshark_is_installed_where_required() -> None:
    assert shutil.which("tshark"), ".ci/run installs tshark: the pcap tests need its dissectors"


@pytest.mark.skipif(not os.environ.get("MATCHWIRE_REQUIRE_TSHARK"), reason="only where CI asks for tshark")
def test_the_capture_tools_the_pcap_tests_use_are_installed_where_required() -> None:
    import subprocess
    for tool in ("editcap", "dumpcap"):
        assert shutil.which(tool), f"{tool} comes with tshark (wireshark-common): the pcap tool tests use it"
    version = subprocess.run(["tshark", "-v"], capture_output=True, text=True, timeout=60).stdout
    assert "with Lua" in version, "the generated dissector needs tshark built with Lua"
    import matplotlib  # noqa: F401  (the test extra: pcap latency --plot)
    import scapy  # noqa: F401  (the test extra: feeds.scapy_layers)
