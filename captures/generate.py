"""Build the generated test captures from ``scenarios.py``, deterministically.

    python captures/generate.py            # (re)write captures/*.pcap[ng] and captures/README.md
    python captures/generate.py --check    # regenerate in memory and compare byte for byte

scapy builds the packet bytes (a development dependency; the analyzer never imports
it); ``pcapwriter`` writes the files with fixed headers, so the output does not depend
on the machine or the time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pcapwriter import pcap_bytes, pcapng_bytes  # noqa: E402
from scenarios import C, MSS, S, SCENARIOS, TS_BASE_NS, Conv, Scenario  # noqa: E402

F, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _frame(conv: Conv, direction: str, seq: int, ack: int, flags: int, payload: bytes, ip_id: int) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether

    src, dst = (conv.client, conv.server) if direction == C else (conv.server, conv.client)
    smac, dmac = (conv.mac_c, conv.mac_s) if direction == C else (conv.mac_s, conv.mac_c)
    pkt = Ether(src=smac, dst=dmac)
    for tag in conv.vlan:
        pkt = pkt / Dot1Q(vlan=tag)
    if ":" in src[0]:
        pkt = pkt / IPv6(src=src[0], dst=dst[0], hlim=64)
    else:
        pkt = pkt / IP(src=src[0], dst=dst[0], id=ip_id & 0xFFFF, ttl=64, flags="DF")
    pkt = pkt / TCP(sport=src[1], dport=dst[1], seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags,
                    window=65535)
    if payload:
        pkt = pkt / payload
    return bytes(pkt)


def _pieces(conv: Conv, msg: bytes) -> list[bytes]:
    if conv.split == "bytes":
        return [msg[i : i + 1] for i in range(len(msg))]
    parts = [msg[i : i + MSS] for i in range(0, len(msg), MSS)]
    if conv.split == "mid_line":
        out = []
        for p in parts:
            h = max(1, len(p) // 2)
            out += [p[:h], p[h:]] if len(p) > 1 else [p]
        return out
    return parts


def conversation_packets(conv: Conv) -> list[bytes]:
    """All frames of one conversation, in wire order, after the segmentation plan."""
    nxt = {C: conv.isn_c + 1, S: conv.isn_s + 1}
    ip_id = [conv.isn_c & 0xFFF]
    pk: list[bytes] = []

    def emit(d: str, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
        ip_id[0] += 1
        return _frame(conv, d, seq, ack, flags, payload, ip_id[0])

    if conv.handshake:
        pk.append(emit(C, conv.isn_c, 0, SYN))
        pk.append(emit(S, conv.isn_s, conv.isn_c + 1, SYN | ACK))
        pk.append(emit(C, conv.isn_c + 1, conv.isn_s + 1, ACK))
    data: list[tuple[str, int, bytes]] = []  # (dir, seq, payload)
    for d, msg in conv.messages:
        for piece in _pieces(conv, msg):
            data.append((d, nxt[d], piece))
            nxt[d] += len(piece)
    # the plan, applied to the data segment list
    plan: list[tuple[str, int, bytes] | None] = list(data)
    for i in conv.drop:
        plan[i] = None
    out: list[tuple[str, int, bytes]] = []
    for idx, item in enumerate(data):
        if plan[idx] is None:
            continue
        out.append(item)
        if idx in conv.overlap_conflict:
            d, sq, pl = item
            out.append((d, sq, bytes(b ^ 0x20 if 0x41 <= (b | 0x20) - 0x20 <= 0x5A else b for b in pl)))
    for i in sorted(conv.retransmit, reverse=True):
        item = data[i]
        pos = out.index(item)
        out.insert(min(pos + 2, len(out)), item)
    for i in conv.reorder:
        item = data[i]
        pos = out.index(item)
        if pos + 1 < len(out):
            out[pos], out[pos + 1] = out[pos + 1], out[pos]
    for d, sq, pl in out:
        other = S if d == C else C
        pk.append(emit(d, sq, _acked(data, other, sq, d), PSH | ACK, pl))
    if conv.close == "fin":
        pk.append(emit(C, nxt[C], nxt[S], F | ACK))
        pk.append(emit(S, nxt[S], nxt[C] + 1, F | ACK))
        pk.append(emit(C, nxt[C] + 1, nxt[S] + 1, ACK))
    elif conv.close == "rst":
        pk.append(emit(C, nxt[C], nxt[S], RST | ACK))
    return pk


def _acked(data: list[tuple[str, int, bytes]], other: str, seq: int, d: str) -> int:
    """ACK number for a segment: everything the other side sent before this segment in the script."""
    acked = None
    for dd, sq, pl in data:
        if dd == d and sq == seq:
            break
        if dd == other:
            acked = sq + len(pl)
    if acked is None:
        first = [sq for dd, sq, _ in data if dd == other]
        return first[0] if first else 0
    return acked


def noise_packets() -> list[bytes]:
    """An HTTP exchange and two DNS packets (not mail: must not become flows)."""
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    http = Conv(("192.0.2.50", 40000), ("203.0.113.80", 80), [
        ("c", b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
        ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000),
    ], isn_c=42, isn_s=4242)
    pk = conversation_packets(http)
    dns = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:06") / IP(src="192.0.2.50", dst="192.0.2.53", id=7) / \
        UDP(sport=5353, dport=53) / DNS(id=1, qd=DNSQR(qname="mail.example."))
    pk.insert(1, bytes(dns))
    return pk


def scenario_packets(sc: Scenario) -> list[bytes]:
    per_conv = [conversation_packets(c) for c in sc.convs]
    if sc.extra_noise:
        per_conv.append(noise_packets())
    if not sc.interleave:
        return [p for conv in per_conv for p in conv]
    out: list[bytes] = []
    i = 0
    while any(i < len(c) for c in per_conv):
        for c in per_conv:
            if i < len(c):
                out.append(c[i])
        i += 1
    return out


def build(sc: Scenario) -> bytes:
    frames = scenario_packets(sc)
    stamped = [(TS_BASE_NS + i * 1_000_123, f) for i, f in enumerate(frames)]
    if sc.fmt == "pcap":
        return pcap_bytes(stamped)
    return pcapng_bytes(stamped)


def readme() -> str:
    rows = ["# Generated captures", "",
            "Made by `python captures/generate.py` from `captures/scenarios.py` (do not edit by hand;",
            "`--check` verifies they match). `real/` holds captures of real Dovecot/Postfix servers.", "",
            "| capture | scenario | must show |", "|---|---|---|"]
    for sc in SCENARIOS:
        ext = "pcap" if sc.fmt == "pcap" else "pcapng"
        shows = ", ".join(f"{k}={v}" for k, v in sc.must_show.items())
        rows.append(f"| `{sc.name}.{ext}` | {sc.description} | {shows} |")
    rows.append("| `xss.pcapng` | made by `captures/make_xss.py` (`--check` verifies it): ID values and XCLIENT "
                "attributes carrying HTML/JS payloads, RTL override and NUL | reports render them inert |")
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    bad = 0
    outputs = {f"{sc.name}.{'pcap' if sc.fmt == 'pcap' else 'pcapng'}": build(sc) for sc in SCENARIOS}
    outputs["README.md"] = readme().encode()
    for name, blob in outputs.items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_bytes() != blob:
                print(f"differs: {path}")
                bad += 1
        else:
            path.write_bytes(blob)
    if args.check:
        print("all captures match their scenarios" if not bad else f"{bad} capture(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
