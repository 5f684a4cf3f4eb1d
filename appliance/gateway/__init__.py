"""Order-entry gateways: sans-IO protocol sessions (OUCH 5.0 over SoupBinTCP, FIX 4.4).

Each session is a state machine owned by one thread (the I/O shell's): bytes and ``now_ns`` in,
commands to submit, bytes to send and session events out. No sockets, clocks or threads here.
"""
