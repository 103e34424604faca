"""The Docker driver's parsing of /proc/net/tcp{,6}: the ports a sandbox listens on."""

from __future__ import annotations

from workers.backends.docker.driver import parse_listening


def test_parse_listening_v4_v6_and_skips_other_states() -> None:
    # Line 3 is Docker's resolver (127.0.0.11) in a sandbox with internet: not the tenant's.
    text = """  sl  local_address rem_address   st tx_queue rx_queue
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000
   2: 0100007F:0CEA 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000
   3: 0B00007F:A02B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A
"""
    assert parse_listening(text) == [
        {"State": "LISTEN", "Ip": "0.0.0.0", "Port": 8080},
        {"State": "LISTEN", "Ip": "127.0.0.1", "Port": 3306},
        {"State": "LISTEN", "Ip": "::", "Port": 80},
        {"State": "LISTEN", "Ip": "::1", "Port": 8081},
    ]
