"""Build ``captures/xss.pcapng``: proxy traffic whose forwarded values attack the report viewers.

    python captures/make_xss.py            # (re)write captures/xss.pcapng
    python captures/make_xss.py --check    # regenerate in memory and compare byte for byte

Every value a peer controls carries a payload aimed at one of the report formats: HTML/SVG
script injection (``<script>``, ``"><img onerror=...>``, ``<svg onload=...>``), ``javascript:``
URLs, template syntax, bidi overrides (U+202E), NUL and other control bytes, bytes that are not
UTF-8, and spreadsheet formulas (``=``, ``+``, ``-``, ``@``). Each script payload sets
``window.__pwned`` to a distinct number, so a browser test can tell that none of them ran.

The conversations (all on cleartext ports, fixed addresses, ISNs and timestamps):
1. the end client's own IMAP connection to the proxy (the first hop of a chain);
2. the proxy's IMAP ``ID`` to the backend forwarding that client, with payloads in the session
   id, ``x-forward-*`` names and values, a LITERAL+ holding NUL and 0xff, and in the replies;
3. another proxy->backend ``ID`` whose forwarded address itself is markup;
4. POP3 ``XCLIENT`` with markup in ADDR, formulas in SESSION/TTL/LOGIN and a FORWARD blob of payloads;
5. submission ``XCLIENT`` whose xtext decodes to markup, U+202E and NUL;
6. LMTP ``RCPT TO ... XRCPTFORWARD=`` with markup and a bidi override in the forwarded fields.

Standalone on purpose (scapy for the frames, ``pcapwriter`` for the file), like ``generate.py``,
so that changing the scenario generator never changes this capture.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pcapwriter import pcapng_bytes  # noqa: E402

OUT = HERE / "xss.pcapng"
TS_BASE_NS = 1_700_000_600 * 10**9  # 2023-11-14T22:23:20Z, fixed
TS_STEP_NS = 1_000_321  # between frames
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10

C, S = "c", "s"
Message = tuple[str, bytes]


def crlf(text: str) -> bytes:
    """Text with LF line ends -> CRLF wire bytes (UTF-8)."""
    return text.replace("\n", "\r\n").encode("utf-8")


def xtext(raw: bytes) -> bytes:
    """RFC 3461 xtext: ``+XX`` for '+', '=', controls, space and bytes outside 0x21-0x7e."""
    return b"".join(bytes([b]) if 0x21 <= b <= 0x7E and b not in b"+=" else b"+%02X" % b for b in raw)


# ------------------------------------------------------------------------------------ payloads

SCRIPT = "<script>window.__pwned=1</script>"
IMG_ATTR = '"><img src=x onerror="window.__pwned=2">'
SVG = "<svg onload=window.__pwned=3>"
JS_URL = "javascript:window.__pwned=4"
RTL = "invoice\u202egpj.exe"
TEMPLATE = "{{7*7}}{% raw %}${7*7}"
FORMULA = "=HYPERLINK(\"http://203.0.113.99/x\",\"click\")"


def imap_client_proxy() -> list[Message]:
    return [
        (S, crlf("* OK [CAPABILITY IMAP4rev1 ID LITERAL+ AUTH=PLAIN] Proxy ready.\n")),
        (C, crlf('a LOGIN "mallory" "pw"\n')),
        (S, crlf("a OK Logged in\n")),
        (C, crlf("b LOGOUT\n")),
        (S, crlf("* BYE Logging out\nb OK Logout completed.\n")),
    ]


def imap_proxy_backend() -> list[Message]:
    q_img = IMG_ATTR.replace('"', '\\"')  # IMAP quoted string: \" stands for "
    q_formula = FORMULA.replace('"', '\\"')
    literal = b"nul\x00byte\xff\x01end"
    id_cmd = (
        f'I ID ("x-session-id" "{SCRIPT}" "x-originating-ip" "198.51.100.66" "x-originating-port" "40001" '
        f'"x-connected-ip" "192.0.2.10" "x-connected-port" "143" "x-proxy-ttl" "5" '
        f'"x-forward-<img src=x onerror=window.__pwned=5>" "{q_img}" "x-forward-url" "{JS_URL}" '
        f'"x-forward-rtl" "{RTL}" "x-forward-tpl" "{TEMPLATE}" "x-forward-csv" "{q_formula}" '
        f'"x-forward-bin" '
    ).encode("utf-8") + b'"caf\xe9\xff" "x-forward-lit" {' + str(len(literal)).encode() + b"+}\r\n" + literal + b")\r\n"
    return [
        (S, crlf("* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE LITERAL+ AUTH=PLAIN] Dovecot ready.\n")),
        (C, id_cmd + crlf('L LOGIN "mallory" "pw"\n')),
        (S, crlf(f'* ID ("name" "{SCRIPT}")\nI OK Trusted ID completed. {SVG}\nL OK Logged in\n')),
        (C, crlf("Z LOGOUT\n")),
        (S, crlf("* BYE Logging out\nZ OK Logout completed.\n")),
    ]


def imap_markup_address() -> list[Message]:
    addr = '\\"><svg onload=window.__pwned=6>'
    return [
        (S, crlf("* OK [CAPABILITY IMAP4rev1 ID LITERAL+] Dovecot ready.\n")),
        (C, crlf(f'I ID ("x-session-id" "{RTL}" "x-originating-ip" "{addr}" "x-originating-port" "-1+2" '
                 f'"x-proxy-ttl" "@SUM(1)")\n')),
        (S, crlf("* ID NIL\nI OK ID completed.\n")),
        (C, crlf("Z LOGOUT\n")),
        (S, crlf("* BYE bye\nZ OK done\n")),
    ]


def pop3_proxy_backend() -> list[Message]:
    blob = f"x={SCRIPT}\tjs={JS_URL}\trtl={RTL}\tcsv={FORMULA}\tnul=a\x00b".encode("utf-8")
    fwd = base64.b64encode(blob).decode("ascii")
    return [
        (S, crlf("+OK [XCLIENT] Dovecot ready.\n")),
        (C, crlf(f"XCLIENT ADDR=<script>window.__pwned=7</script> PORT=40003 SESSION=@cmd|'/Ccalc'!A0 "
                 f"TTL=-2+3 LOGIN=+cmd FORWARD={fwd}\nUSER mallory\n")),
        (S, crlf("+OK <b>Updated</b>\n+OK\n")),
        (C, crlf("QUIT\n")),
        (S, crlf("+OK Logging out.\n")),
    ]


def submission_proxy_backend() -> list[Message]:
    helo = xtext(b"<script>window.__pwned=8</script>").decode("ascii")
    login = xtext("evil\u202etxt.js".encode()).decode("ascii")
    sess = xtext(b"=1+1\x00tail").decode("ascii")
    fwd = xtext(base64.b64encode(f"tpl={TEMPLATE}\tsvg={SVG}".encode())).decode("ascii")
    return [
        (S, crlf("220 backend.example Dovecot ready.\n")),
        (C, crlf("EHLO proxy.example\n")),
        (S, crlf("250-backend.example\n250-XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL DESTADDR DESTPORT FORWARD\n"
                 "250 PIPELINING\n")),
        (C, crlf(f"XCLIENT ADDR=IPV6:2001:db8::66 PORT=40004 HELO={helo} LOGIN={login} SESSION={sess} TTL=5 "
                 f"FORWARD={fwd}\n")),
        (S, crlf("220 backend.example <script>window.__pwned=9</script> ready.\n")),
        (C, crlf("QUIT\n")),
        (S, crlf("221 2.0.0 Bye\n")),
    ]


def lmtp_proxy_backend() -> list[Message]:
    fwd = xtext(f"tenant={IMG_ATTR}\tnote={RTL}\tcsv=@SUM(9)".encode()).decode("ascii")
    return [
        (S, crlf("220 backend.example Dovecot ready.\n")),
        (C, crlf("LHLO proxy.example\n")),
        (S, crlf("250-backend.example\n250-XRCPTFORWARD\n250 PIPELINING\n")),
        (C, crlf(f"MAIL FROM:<s@example.org>\nRCPT TO:<victim@example.com> XRCPTFORWARD={fwd}\n")),
        (S, crlf("250 2.1.0 OK\n250 2.1.5 OK <img src=x onerror=window.__pwned=10>\n")),
        (C, crlf("QUIT\n")),
        (S, crlf("221 2.0.0 Bye\n")),
    ]


# (client, server, isn_c, isn_s, messages)
CONVERSATIONS: list[tuple[tuple[str, int], tuple[str, int], int, int, list[Message]]] = [
    (("198.51.100.66", 40001), ("192.0.2.10", 143), 21_000_000, 22_000_000, imap_client_proxy()),
    (("192.0.2.20", 51500), ("192.0.2.30", 143), 23_000_000, 24_000_000, imap_proxy_backend()),
    (("192.0.2.20", 51501), ("192.0.2.30", 143), 25_000_000, 26_000_000, imap_markup_address()),
    (("192.0.2.20", 52500), ("192.0.2.31", 110), 27_000_000, 28_000_000, pop3_proxy_backend()),
    (("192.0.2.20", 53500), ("192.0.2.32", 587), 29_000_000, 30_000_000, submission_proxy_backend()),
    (("192.0.2.21", 54500), ("192.0.2.33", 24), 31_000_000, 32_000_000, lmtp_proxy_backend()),
]

MSS = 1400
MAC_C, MAC_S = "02:00:00:00:0a:01", "02:00:00:00:0a:02"  # locally administered, fixed


def conversation_frames(client: tuple[str, int], server: tuple[str, int], isn_c: int, isn_s: int,
                        messages: list[Message]) -> list[bytes]:
    """Handshake, one segment per message (split at MSS), FIN exchange: Ethernet/IPv4/TCP frames."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    nxt = {C: isn_c + 1, S: isn_s + 1}
    ip_id = [isn_c & 0xFFF]

    def frame(d: str, flags: int, payload: bytes = b"", seq: int | None = None) -> bytes:
        src, dst = (client, server) if d == C else (server, client)
        smac, dmac = (MAC_C, MAC_S) if d == C else (MAC_S, MAC_C)
        other = S if d == C else C
        ip_id[0] += 1
        pkt = Ether(src=smac, dst=dmac) / IP(src=src[0], dst=dst[0], id=ip_id[0] & 0xFFFF, ttl=64, flags="DF") / TCP(
            sport=src[1], dport=dst[1], seq=(nxt[d] if seq is None else seq) & 0xFFFFFFFF,
            ack=nxt[other] & 0xFFFFFFFF if flags & ACK else 0, flags=flags, window=65535)
        if payload:
            pkt = pkt / payload
        return bytes(pkt)

    out = [frame(C, SYN, seq=isn_c), frame(S, SYN | ACK, seq=isn_s), frame(C, ACK)]
    for d, msg in messages:
        for i in range(0, len(msg), MSS):
            piece = msg[i : i + MSS]
            out.append(frame(d, PSH | ACK, piece))
            nxt[d] += len(piece)
    out.append(frame(C, FIN | ACK))
    nxt[C] += 1
    out.append(frame(S, FIN | ACK))
    nxt[S] += 1
    out.append(frame(C, ACK))
    return out


def build() -> bytes:
    """The capture file's bytes (conversations one after another, fixed timestamps)."""
    frames = [f for conv in CONVERSATIONS for f in conversation_frames(*conv)]
    return pcapng_bytes((TS_BASE_NS + i * TS_STEP_NS, f) for i, f in enumerate(frames))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = ap.parse_args()
    blob = build()
    if args.check:
        same = OUT.exists() and OUT.read_bytes() == blob
        print("xss.pcapng matches its generator" if same else f"differs: {OUT}")
        return 0 if same else 1
    OUT.write_bytes(blob)
    print(f"wrote {OUT} ({len(blob)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
