"""Holding the CPUs out of deep idle states while the appliance runs (appliance.process), on this
machine's real /dev/cpu_dma_latency."""
from __future__ import annotations

import os
import sys

import pytest

from appliance.process import CPU_DMA_LATENCY, hold_cpu_dma_latency


def _current() -> int:
    with open(CPU_DMA_LATENCY, "rb") as f:
        return int.from_bytes(f.read(4), sys.byteorder, signed=True)


@pytest.mark.skipif(not os.access(CPU_DMA_LATENCY, os.W_OK), reason="needs a writable /dev/cpu_dma_latency (root)")
def test_the_request_holds_while_the_descriptor_is_open() -> None:
    before = _current()
    fd, text = hold_cpu_dma_latency(0)
    assert fd is not None, text
    try:
        assert _current() == 0
        assert "at most 0 µs" in text
    finally:
        os.close(fd)
    assert _current() == before


def test_no_device_is_one_line_and_no_failure(tmp_path) -> None:
    fd, text = hold_cpu_dma_latency(0, str(tmp_path / "no-such-device"))
    assert fd is None
    assert text.startswith("CPU idle states left alone:") and "\n" not in text
