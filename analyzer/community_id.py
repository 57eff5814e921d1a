"""Community ID flow hashing, version 1 (https://github.com/corelight/community-id-spec).

The same string Zeek, Suricata, Arkime and Wireshark print for a flow, so a
finding can be joined with their logs.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct

IPPROTO_TCP = 6  # IANA protocol number


def community_id(src_ip: str, src_port: int, dst_ip: str, dst_port: int, proto: int = IPPROTO_TCP,
                 seed: int = 0) -> str:
    """``1:<base64 sha1>`` for the flow, independent of direction."""
    s = ipaddress.ip_address(src_ip).packed
    d = ipaddress.ip_address(dst_ip).packed
    sp, dp = src_port, dst_port
    if (s, sp) > (d, dp):
        s, d, sp, dp = d, s, dp, sp
    digest = hashlib.sha1(struct.pack("!H", seed) + s + d + struct.pack("!BBHH", proto, 0, sp, dp)).digest()
    return "1:" + base64.b64encode(digest).decode("ascii")
