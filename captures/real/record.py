#!/usr/bin/env python3
"""Record real Dovecot and Postfix proxy sessions on loopback with tcpdump.

Usage: python3 captures/real/record.py [--install] [--out DIR] [--only SCENARIO[,..]]
                                       [--keep-tmp] [--list]

Every scenario writes `<scenario>.pcap` (tcpdump -i lo) and `<scenario>.expected.json`
(what the analyzer must report, taken from the wire and from the backend's own log).

Strategy:
    Each scenario runs on fresh, private server instances: Dovecot started as
    `dovecot -c <file>` (own base_dir/state_dir/log under a temp dir, never the system
    /etc/dovecot instance) and, for `postfix_xclient`, Postfix started as
    `postfix -c <dir> start` (own config_directory/queue_directory). The instances are
    started and listening (checked in /proc/net/tcp*, so no probe connection pollutes the
    capture) before tcpdump starts; tcpdump is started before and stopped (SIGINT) after
    the sessions, once every TCP connection of the scenario's ports has left the
    ESTABLISHED/closing states. The end client is Python's imaplib/poplib/smtplib bound to
    127.0.0.10 (raw sockets for the hostile sessions). Afterwards the pcap is re-read with
    a small stdlib pcap/TCP reassembler, the forwarding commands (IMAP ID, POP3/SMTP
    XCLIENT, LMTP RCPT XRCPTFORWARD=) and their replies are decoded from the wire, and the
    backend log lines for the same TCP connection (matched by real_rip/real_rport, the
    session id, or the forwarded port) give what the backend actually applied. Both go
    into expected.json, and every value present in both is cross-checked.
    Everything is stopped in `finally` blocks, also on failure.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import imaplib
import ipaddress
import json
import os
import poplib
import re
import select
import shutil
import signal
import smtplib
import socket
import socketserver
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONF_DIR = HERE / "conf"

APT_PACKAGES = (
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-lmtpd",
    "dovecot-submissiond",
    "postfix",
    "tcpdump",
)

# ---------------------------------------------------------------------------------------
# Addresses and ports
# ---------------------------------------------------------------------------------------
CLIENT = "127.0.0.10"  # end client (every client socket is bound to it)
PROXY = "127.0.0.2"  # first Dovecot proxy
PROXY2 = "127.0.0.4"  # second Dovecot proxy (two-hop scenario)
BACKEND = "127.0.0.3"  # Dovecot backend
RELAY = "127.0.0.5"  # Python SMTP sink: the backend's submission_relay_host
MTA = "127.0.0.6"  # private Postfix instance
LOOPBACK_V6 = "::1"
V6_CLIENT = "fd00:fa::10"  # added to lo with `ip -6 addr add ... nodad` when possible
V6_PROXY = "fd00:fa::2"
V6_BACKEND = "fd00:fa::3"
FORWARDED_IP = "198.51.100.7"  # documentation address used in hand-made XCLIENT/ID
SPOOFED_IP = "203.0.113.66"  # documentation address used by the spoofing end client

BACKEND_PORTS = {"imap": 10143, "pop3": 10110, "submission": 10587, "lmtp": 10024}
PROXY_PORTS = {"imap": 143, "pop3": 110, "submission": 587, "lmtp": 24}
PROXY2_PORTS = {"imap": 1143, "pop3": 1110, "submission": 1587, "lmtp": 1024}
RELAY_PORT = 25
MTA_PORT = 25

USER = "alice"
PASSWORD = "secret"
NOBODY_UID = 65534  # mail files belong to nobody:nogroup (passwd-file userdb uid/gid)

# Proxy passdb forward_<name>=<value> fields. The joined list "tenant=acme<TAB>plan=gold<TAB>
# region=eu" is 31 bytes, so its base64 ends in "==" (raw on POP3, "+3D+3D" in submission xtext).
FORWARD_FIELDS = {"tenant": "acme", "plan": "gold", "region": "eu"}

TIMEOUT = 5.0  # seconds, every client socket operation
START_TIMEOUT = 15.0  # seconds, a server instance to start listening
MAX_LINE = 65536  # bytes, longest reply line a raw client reads

# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(f"[record] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text."""
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def text(data: bytes) -> str:
    """Decode wire bytes for JSON: latin-1 keeps every byte as one code point."""
    return data.decode("latin-1")


def run_daemon(cmd: list[str], out_file: Path) -> int:
    """Run a command that daemonizes; its output goes to a file (a pipe would stay open)."""
    with out_file.open("ab") as fh:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT).returncode


def fill_template(name: str, dest: Path, values: dict[str, object]) -> Path:
    """Fill conf/<name> with string.Template and write it to dest."""
    tpl = string.Template((CONF_DIR / name).read_text())
    dest.write_text(tpl.substitute({k: str(v) for k, v in values.items()}))
    return dest


def fmt_ep(ip: str, port: int) -> str:
    """Format an endpoint, bracketing IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# ---------------------------------------------------------------------------------------
# Installation and versions
# ---------------------------------------------------------------------------------------


def installed(pkg: str) -> bool:
    """True when dpkg reports the package as installed."""
    res = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
    return res.returncode == 0 and "install ok installed" in res.stdout


def install() -> None:
    """apt-get install the servers (idempotent; postfix preseeded to 'No configuration')."""
    missing = [p for p in APT_PACKAGES if not installed(p)]
    if not missing:
        log("all packages already installed")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    log(f"apt-get update; installing {' '.join(missing)}")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def versions() -> dict[str, str]:
    """Exact versions of the servers and tools used."""
    out: dict[str, str] = {}
    out["dovecot"] = run(["dovecot", "--version"]).stdout.strip()
    out["postfix"] = run(["postconf", "-d", "-h", "mail_version"], check=False).stdout.strip()
    for pkg in ("dovecot-core", "postfix", "tcpdump"):
        res = run(["dpkg-query", "-W", "-f=${Version}", pkg], check=False)
        out[f"deb:{pkg}"] = res.stdout.strip()
    out["python"] = sys.version.split()[0]
    return out


# ---------------------------------------------------------------------------------------
# /proc/net/tcp: listening and open connections without touching the network
# ---------------------------------------------------------------------------------------
TCP_LISTEN = "0A"  # include/net/tcp_states.h TCP_LISTEN
TCP_TIME_WAIT = "06"  # TCP_TIME_WAIT
TCP_CLOSE = "07"  # TCP_CLOSE


def _proc_addr(hexaddr: str) -> tuple[str, int]:
    """Decode one 'ADDR:PORT' field of /proc/net/tcp{,6} (host-order 32-bit words)."""
    addr_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(addr_hex)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = str(ipaddress.ip_address(words))
    return ip, int(port_hex, 16)


def proc_sockets() -> Iterator[tuple[tuple[str, int], tuple[str, int], str]]:
    """Yield (local, remote, state) for every TCP socket of this network namespace."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            yield _proc_addr(parts[1]), _proc_addr(parts[2]), parts[3]


def wait_listening(endpoints: list[tuple[str, int]], timeout: float = START_TIMEOUT) -> None:
    """Wait until every (ip, port) has a listening socket."""
    want = {(str(ipaddress.ip_address(ip)), port) for ip, port in endpoints}
    deadline = time.monotonic() + timeout
    while True:
        have = {local for local, _r, st in proc_sockets() if st == TCP_LISTEN}
        if want <= have:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not listening after {timeout}s: {sorted(want - have)}")
        time.sleep(0.05)


def wait_connections_closed(ports: set[int], timeout: float = 5.0) -> bool:
    """Wait until no connection on these ports is still open or closing (TIME_WAIT is done)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [
            (loc, rem, st)
            for loc, rem, st in proc_sockets()
            if st not in (TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE) and (loc[1] in ports or rem[1] in ports)
        ]
        if not busy:
            return True
        if time.monotonic() > deadline:
            log(f"warning: connections still open: {busy}")
            return False
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------


@dataclass
class Dovecot:
    """One private Dovecot instance."""

    name: str
    role: str  # "backend" | "proxy"
    root: Path
    listen: str
    ports: dict[str, int]
    template_values: dict[str, object]
    conf: Path = field(init=False)
    log_file: Path = field(init=False)
    pid: int | None = None

    def __post_init__(self) -> None:
        self.conf = self.root / "dovecot.conf"
        self.log_file = self.root / "dovecot.log"

    def start(self) -> None:
        """Write the config and start the instance; wait until it listens."""
        run_dir = self.root / "run"
        state_dir = self.root / "state"
        run_dir.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        values: dict[str, object] = dict(
            instance=f"fwdaudit-{self.name}",
            run_dir=run_dir,
            state_dir=state_dir,
            log_file=self.log_file,
            listen=self.listen,
            imap_port=self.ports["imap"],
            pop3_port=self.ports["pop3"],
            submission_port=self.ports["submission"],
            lmtp_port=self.ports["lmtp"],
        )
        values.update(self.template_values)
        fill_template(f"{self.role}.conf.in", self.conf, values)
        rc = run_daemon(["dovecot", "-c", str(self.conf)], self.root / "start.out")
        if rc != 0:
            out = (self.root / "start.out").read_text(errors="replace").strip()
            raise RuntimeError(f"dovecot -c {self.conf} failed rc={rc}: {out}")
        self.pid = self._read_pid(START_TIMEOUT)
        wait_listening([(self.listen, p) for p in self.ports.values()])

    def _read_pid(self, timeout: float) -> int | None:
        """The master's pid from base_dir/master.pid (written after it daemonized)."""
        pid_file = self.root / "run" / "master.pid"
        deadline = time.monotonic() + timeout
        while True:
            try:
                return int(pid_file.read_text().strip())
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the instance (doveadm stop, then SIGKILL if it lingers)."""
        if self.pid is None:
            self.pid = self._read_pid(0.0)
        if self.pid is None:
            return
        run_daemon(["doveadm", "-c", str(self.conf), "stop"], self.root / "start.out")
        if not _wait_pid_gone(self.pid, 10.0):
            log(f"{self.name}: master {self.pid} still alive, SIGKILL")
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_pid_gone(self.pid, 5.0)
        self.pid = None

    def log_lines(self) -> list[str]:
        """The instance's log, one string per line."""
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return []


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class Postfix:
    """One private Postfix instance (own config_directory and queue_directory)."""

    root: Path
    listen: str
    port: int
    xclient_hosts: str
    conf_dir: Path = field(init=False)
    log_file: Path = field(init=False)
    started: bool = False

    def __post_init__(self) -> None:
        self.conf_dir = self.root / "conf"
        self.log_file = self.root / "log" / "postfix.log"

    def start(self) -> None:
        """Write main.cf/master.cf and `postfix -c DIR start`; wait until smtpd listens."""
        queue = self.root / "queue"
        data = self.root / "data"
        for d in (self.conf_dir, queue, data, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(data, "postfix", "postfix")
        values: dict[str, object] = dict(
            queue_dir=queue,
            data_dir=data,
            log_file=self.log_file,
            log_dir=self.log_file.parent,
            listen=self.listen,
            port=self.port,
            xclient_hosts=self.xclient_hosts,
        )
        fill_template("postfix-main.cf.in", self.conf_dir / "main.cf", values)
        fill_template("postfix-master.cf.in", self.conf_dir / "master.cf", values)
        out_file = self.root / "start.out"
        rc = run_daemon(["postfix", "-c", str(self.conf_dir), "start"], out_file)
        self.started = True
        if rc != 0:
            raise RuntimeError(
                f"postfix start failed rc={rc}: {out_file.read_text(errors='replace')}"
                f" log: {self.log_lines()[-5:]}"
            )
        wait_listening([(self.listen, self.port)])

    def stop(self) -> None:
        """`postfix -c DIR stop`, then make sure its master is gone."""
        if not self.started:
            return
        pid_file = self.root / "queue" / "pid" / "master.pid"
        pid = None
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pass
        run_daemon(["postfix", "-c", str(self.conf_dir), "stop"], self.root / "start.out")
        if pid is not None and not _wait_pid_gone(pid, 10.0):
            run_daemon(["postfix", "-c", str(self.conf_dir), "abort"], self.root / "start.out")
            _wait_pid_gone(pid, 5.0)
        self.started = False

    def log_lines(self) -> list[str]:
        """The instance's maillog_file, one string per line."""
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return []


class SmtpSink:
    """A minimal SMTP server (accepts everything, keeps nothing): the submission relay."""

    def __init__(self, host: str, port: int) -> None:
        self.received: list[str] = []

        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 10

            def handle(self) -> None:
                def reply(line: bytes) -> None:
                    self.wfile.write(line + b"\r\n")
                    self.wfile.flush()

                reply(b"220 relay.fwdaudit.test ESMTP sink")
                in_data = False
                while True:
                    try:
                        line = self.rfile.readline(4096)
                    except OSError:
                        return
                    if not line:
                        return
                    if in_data:
                        if line == b".\r\n":
                            in_data = False
                            reply(b"250 2.0.0 Ok: accepted by sink")
                        continue
                    sink.received.append(text(line).rstrip("\r\n"))
                    verb = line.split(b" ", 1)[0].strip().upper()
                    if verb in (b"EHLO", b"HELO"):
                        reply(b"250-relay.fwdaudit.test\r\n250-8BITMIME\r\n250 PIPELINING")
                    elif verb == b"DATA":
                        in_data = True
                        reply(b"354 End data with <CR><LF>.<CR><LF>")
                    elif verb == b"QUIT":
                        reply(b"221 2.0.0 Bye")
                        return
                    else:
                        reply(b"250 2.0.0 Ok")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        """Serve in a thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------


TCPDUMP_BUFFER_KIB = 8192  # tcpdump -B: kernel ring size in KiB
TPACKET_BLOCK_WAIT = 1.3  # seconds; > libpcap's 1000 ms TPACKET_V3 block timeout


class Capture:
    """tcpdump -i lo -w FILE -s 0 -U '<filter>' around a block of sessions."""

    def __init__(self, path: Path, ports: set[int]) -> None:
        self.path = path
        self.ports = ports
        self.filter = "tcp and (" + " or ".join(f"port {p}" for p in sorted(ports)) + ")"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats = ""

    def __enter__(self) -> Capture:
        if self.path.exists():
            self.path.unlink()
        self.proc = subprocess.Popen(
            [
                "tcpdump",
                "-i",
                "lo",
                "-n",
                # No --immediate-mode: libpcap then uses fixed snaplen-sized ring slots
                # (8 slots of 256 KiB in the default 2 MiB buffer) and drops bursts.
                "-B",
                str(TCPDUMP_BUFFER_KIB),
                "-w",
                str(self.path),
                "-s",
                "0",
                "-U",
                self.filter,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10.0
        seen = b""
        while b"listening on" not in seen:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"tcpdump did not start: {seen!r}")
            ready, _w, _x = select.select([self.proc.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                seen += chunk
        return self

    def __exit__(self, *exc: object) -> None:
        wait_connections_closed(self.ports)
        # TPACKET_V3 hands a ring block to tcpdump when it is full or its timeout (1 s,
        # libpcap's default for tcpdump) expires; a block still open at SIGINT is lost.
        time.sleep(TPACKET_BLOCK_WAIT)
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            _out, err = self.proc.communicate(timeout=10)
            self.stats = err.decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------


def bound_connection(src: str, host: str, port: int, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection from src (port chosen by the kernel) to host:port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((src, 0))
    sock.connect((host, port))
    return sock


class BoundIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 whose socket is bound to a source address."""

    def __init__(self, src: str, host: str, port: int) -> None:
        self._src = src
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return bound_connection(self._src, self.host, self.port, timeout or TIMEOUT)


class BoundPOP3(poplib.POP3):
    """poplib.POP3 whose socket is bound to a source address."""

    def __init__(self, src: str, host: str, port: int) -> None:
        self._src = src
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float) -> socket.socket:
        return bound_connection(self._src, self.host, self.port, timeout)


class Raw:
    """A raw line-oriented client session that records what it sent and received."""

    def __init__(self, src: str, host: str, port: int, label: str) -> None:
        self.label = label
        self.sock = bound_connection(src, host, port)
        self.local = self.sock.getsockname()[:2]
        self.buf = b""
        self.eof = False
        self.exchanges: list[dict[str, Any]] = []
        self.greeting: list[str] = []

    def _line(self) -> bytes | None:
        while b"\n" not in self.buf:
            if self.eof or len(self.buf) > MAX_LINE:
                break
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
        if not self.buf:
            return None
        idx = self.buf.find(b"\n")
        if idx < 0:
            line, self.buf = self.buf, b""
        else:
            line, self.buf = self.buf[: idx + 1], self.buf[idx + 1 :]
        return line

    def read_reply(self, done: Callable[[bytes], bool]) -> list[str]:
        """Read lines until done(line) is true, EOF or timeout."""
        lines: list[str] = []
        while True:
            line = self._line()
            if line is None:
                if self.eof:
                    lines.append("<EOF>")
                return lines
            lines.append(text(line).rstrip("\r\n"))
            if done(line):
                return lines

    def greet(self, done: Callable[[bytes], bool]) -> list[str]:
        """Read the server greeting."""
        self.greeting = self.read_reply(done)
        return self.greeting

    def send(self, data: bytes, done: Callable[[bytes], bool], note: str = "") -> list[str]:
        """Send bytes and read the reply; record the exchange."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.exchanges.append({"sent_len": len(data), "reply": [f"<send failed: {exc}>"]})
            return []
        reply = self.read_reply(done)
        shown = text(data)
        entry: dict[str, Any] = {
            "sent": shown if len(shown) <= 200 else shown[:120] + f"...<{len(data)} bytes>",
            "sent_len": len(data),
            "reply": reply,
        }
        if note:
            entry["note"] = note
        self.exchanges.append(entry)
        return reply

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def record(self) -> dict[str, Any]:
        """The session as the client saw it."""
        return {
            "label": self.label,
            "client": fmt_ep(*self.local),
            "greeting": self.greeting,
            "exchanges": self.exchanges,
        }


def imap_done(tag: bytes) -> Callable[[bytes], bool]:
    """Reply predicate: the tagged completion or an untagged BYE."""
    return lambda line: line.startswith(tag + b" ") or line.startswith(b"* BYE")


def pop3_done(line: bytes) -> bool:
    """Reply predicate: one POP3 status line."""
    return line.startswith((b"+OK", b"-ERR"))


def smtp_done(line: bytes) -> bool:
    """Reply predicate: the last line of an SMTP reply."""
    return len(line) >= 4 and line[3:4] != b"-"


def any_line(line: bytes) -> bool:
    """Reply predicate: any single line (IMAP greeting)."""
    return True


# ---------------------------------------------------------------------------------------
# pcap reading and TCP reassembly (stdlib only)
# ---------------------------------------------------------------------------------------
PCAP_MAGIC_US = 0xA1B2C3D4  # libpcap, microsecond timestamps
PCAP_MAGIC_NS = 0xA1B23C4D  # libpcap, nanosecond timestamps
LINKTYPE_NULL = 0  # BSD loopback
LINKTYPE_ETHERNET = 1  # tcpdump -i lo on Linux
LINKTYPE_LINUX_SLL = 113  # tcpdump -i any
LINKTYPE_LINUX_SLL2 = 276  # tcpdump -i any (newer)
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
IPPROTO_TCP = 6
TH_FIN = 0x01  # TCP flags
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10


@dataclass
class Conn:
    """One TCP connection as seen in the capture (payload reassembled per direction)."""

    index: int
    client: tuple[str, int]
    server: tuple[str, int]
    first_frame: int
    segs: dict[bool, dict[int, bytes]] = field(default_factory=lambda: {True: {}, False: {}})
    isn: dict[bool, int] = field(default_factory=dict)
    closed_by: str = ""
    gaps: list[tuple[bool, int, int]] = field(default_factory=list)  # (to_server, offset, length)

    def stream(self, to_server: bool) -> bytes:
        """Concatenate the payload of one direction in sequence order (overlaps dropped)."""
        out = bytearray()
        base = self.isn.get(to_server)
        if base is None:
            return b""
        pos = 0
        for rel, data in sorted(((s - base - 1) % (1 << 32), d) for s, d in self.segs[to_server].items()):
            if rel + len(data) <= pos:
                continue
            if rel > pos:
                self.gaps.append((to_server, pos, rel - pos))
                pos = rel
            out += data[pos - rel :]
            pos = rel + len(data)
        return bytes(out)

    @property
    def c2s(self) -> bytes:
        return self.stream(True)

    @property
    def s2c(self) -> bytes:
        return self.stream(False)


def read_pcap(path: Path) -> list[Conn]:
    """Read a pcap file and return its TCP connections in order of first SYN."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic_le = struct.unpack_from("<I", data, 0)[0]
    if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian = "<"
    else:
        endian = ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    rec = struct.Struct(endian + "IIII")
    off = 24
    frame = 0
    conns: dict[tuple[tuple[str, int], tuple[str, int]], Conn] = {}
    order: list[Conn] = []
    while off + rec.size <= len(data):
        _ts, _tsf, incl, _orig = rec.unpack_from(data, off)
        off += rec.size
        pkt = data[off : off + incl]
        off += incl
        frame += 1
        parsed = _parse_frame(pkt, linktype)
        if parsed is None:
            continue
        src, dst, seq, flags, payload = parsed
        key = (src, dst)
        rkey = (dst, src)
        if flags & TH_SYN and not flags & TH_ACK:
            conn = Conn(index=len(order) + 1, client=src, server=dst, first_frame=frame)
            conn.isn[True] = seq
            conns[key] = conn
            conns[rkey] = conn
            order.append(conn)
            continue
        conn_opt = conns.get(key)
        if conn_opt is None:
            continue
        conn = conn_opt
        to_server = src == conn.client
        if flags & TH_SYN:
            conn.isn[False] = seq
            continue
        if payload:
            conn.segs[to_server].setdefault(seq, payload)
        if flags & (TH_FIN | TH_RST) and not conn.closed_by:
            who = "client" if to_server else "server"
            conn.closed_by = f"{who}:{'RST' if flags & TH_RST else 'FIN'}"
    return order


def _parse_frame(
    pkt: bytes, linktype: int
) -> tuple[tuple[str, int], tuple[str, int], int, int, bytes] | None:
    if linktype == LINKTYPE_ETHERNET:
        if len(pkt) < 14:
            return None
        etype = struct.unpack_from("!H", pkt, 12)[0]
        l3 = pkt[14:]
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(pkt) < 16:
            return None
        etype = struct.unpack_from("!H", pkt, 14)[0]
        l3 = pkt[16:]
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(pkt) < 20:
            return None
        etype = struct.unpack_from("!H", pkt, 0)[0]
        l3 = pkt[20:]
    elif linktype == LINKTYPE_NULL:
        if len(pkt) < 4:
            return None
        fam = struct.unpack_from("=I", pkt, 0)[0]
        etype = ETH_IPV4 if fam == 2 else ETH_IPV6
        l3 = pkt[4:]
    else:
        return None
    if etype == ETH_IPV4 and len(l3) >= 20:
        ihl = (l3[0] & 0x0F) * 4
        total = struct.unpack_from("!H", l3, 2)[0]
        if l3[9] != IPPROTO_TCP:
            return None
        sip = socket.inet_ntop(socket.AF_INET, l3[12:16])
        dip = socket.inet_ntop(socket.AF_INET, l3[16:20])
        l4 = l3[ihl:total]
    elif etype == ETH_IPV6 and len(l3) >= 40:
        plen = struct.unpack_from("!H", l3, 4)[0]
        if l3[6] != IPPROTO_TCP:
            return None
        sip = socket.inet_ntop(socket.AF_INET6, l3[8:24])
        dip = socket.inet_ntop(socket.AF_INET6, l3[24:40])
        l4 = l3[40 : 40 + plen]
    else:
        return None
    if len(l4) < 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", l4, 0)
    doff = (l4[12] >> 4) * 4
    flags = l4[13]
    return (sip, sport), (dip, dport), seq, flags, l4[doff:]


# ---------------------------------------------------------------------------------------
# Wire decoding of the forwarding commands
# ---------------------------------------------------------------------------------------


def lines_of(stream: bytes) -> list[bytes]:
    """Split a stream into CRLF/LF-terminated lines (terminators stripped)."""
    out = stream.split(b"\n")
    if out and out[-1] == b"":
        out.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in out]


class ImapTok:
    """Tokenizer for one IMAP command's arguments, literals included."""

    def __init__(self, stream: bytes, pos: int) -> None:
        self.s = stream
        self.p = pos

    def skip_sp(self) -> None:
        while self.p < len(self.s) and self.s[self.p : self.p + 1] == b" ":
            self.p += 1

    def peek(self) -> bytes:
        return self.s[self.p : self.p + 1]

    def string(self) -> tuple[str | None, str]:
        """Read a quoted string, literal or NIL; return (value, form)."""
        self.skip_sp()
        c = self.peek()
        if c == b'"':
            self.p += 1
            out = bytearray()
            while self.p < len(self.s):
                ch = self.s[self.p]
                if ch == 0x5C and self.p + 1 < len(self.s):
                    out.append(self.s[self.p + 1])
                    self.p += 2
                    continue
                if ch == 0x22:
                    self.p += 1
                    return text(bytes(out)), "quoted"
                if ch in (0x0D, 0x0A):
                    break
                out.append(ch)
                self.p += 1
            raise ValueError("unterminated quoted string")
        if c == b"{":
            m = re.match(rb"\{(\d+)(\+?)\}\r?\n", self.s[self.p :])
            if not m:
                raise ValueError("bad literal")
            n = int(m.group(1))
            start = self.p + m.end()
            self.p = start + n
            return text(self.s[start : start + n]), "literal+" if m.group(2) else "literal"
        m = re.match(rb"[^\s()]+", self.s[self.p :])
        if not m:
            raise ValueError(f"expected string at {self.p}")
        self.p += m.end()
        atom = text(m.group(0))
        if atom.upper() == "NIL":
            return None, "NIL"
        return atom, "atom"


def imap_id_commands(c2s: bytes) -> list[dict[str, Any]]:
    """Find every `<tag> ID ...` command in a client stream and decode its pairs."""
    out: list[dict[str, Any]] = []
    for m in re.finditer(rb"(?m)^([^\s]+) ID ", c2s):
        if m.start() > 0 and c2s[m.start() - 1 : m.start()] != b"\n":
            continue
        tag = text(m.group(1))
        tok = ImapTok(c2s, m.end())
        pairs: list[list[str | None]] = []
        forms: list[str] = []
        error = ""
        try:
            tok.skip_sp()
            if tok.peek() == b"(":
                tok.p += 1
                while True:
                    tok.skip_sp()
                    if tok.peek() == b")":
                        tok.p += 1
                        break
                    k, kf = tok.string()
                    v, vf = tok.string()
                    pairs.append([k, v])
                    forms.append(vf)
            else:
                tok.string()
        except ValueError as exc:
            error = str(exc)
        end = c2s.find(b"\n", tok.p)
        raw = c2s[m.start() : end if end >= 0 else len(c2s)].rstrip(b"\r")
        out.append(
            {
                "tag": tag,
                "raw": text(raw),
                "raw_len": len(raw),
                "pairs": pairs,
                "value_forms": forms,
                "parse_error": error,
            }
        )
    return out


def imap_reply_for(s2c: bytes, tag: str) -> list[str]:
    """The untagged ID/BYE lines and the tagged completion for `tag` (first one)."""
    lines = [text(ln) for ln in lines_of(s2c)]
    out: list[str] = []
    for line in lines:
        if line.startswith("* ID ") or line.startswith("* BYE"):
            out.append(line)
            if line.startswith("* BYE"):
                return out
        if line.startswith(tag + " "):
            out.append(line)
            return out
    return out


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext decoding (+XX hex)."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def tab_unescape(s: str) -> str:
    """Dovecot str_tabunescape(): 0x01 + 1/t/r/n/0 -> byte; 0x01 + other -> other."""
    out: list[str] = []
    i = 0
    table = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\x00"}
    while i < len(s):
        ch = s[i]
        if ch == "\x01":
            if i + 1 < len(s):
                out.append(table.get(s[i + 1], s[i + 1]))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def forward_list(raw: str) -> dict[str, str]:
    """Split a tab-separated forward list into {name: value} (tab-unescaped)."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for elem in raw.split("\t"):
        elem = tab_unescape(elem)
        name, _sep, value = elem.partition("=")
        out[name] = value
    return out


def b64_forward(value: str) -> tuple[dict[str, str] | None, str]:
    """Decode a base64 FORWARD value into its forward list, or (None, error)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        return None, f"bad base64: {exc}"
    return forward_list(text(raw)), ""


@dataclass
class SmtpExchange:
    """One SMTP/LMTP command and its reply lines."""

    command: bytes
    reply: list[str]


def smtp_exchanges(c2s: bytes, s2c: bytes) -> tuple[list[str], list[SmtpExchange]]:
    """Pair SMTP/LMTP commands with replies (handles DATA and BDAT payloads)."""
    replies: list[list[str]] = []
    cur: list[str] = []
    for line in lines_of(s2c):
        t = text(line)
        cur.append(t)
        if len(t) < 4 or t[3:4] != "-":
            replies.append(cur)
            cur = []
    if cur:
        replies.append(cur)
    commands: list[bytes] = []
    pos = 0
    while pos < len(c2s):
        end = c2s.find(b"\n", pos)
        if end < 0:
            commands.append(c2s[pos:])
            break
        line = c2s[pos:end].rstrip(b"\r")
        pos = end + 1
        commands.append(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"DATA":
            term = c2s.find(b"\r\n.\r\n", pos - 2)
            pos = len(c2s) if term < 0 else term + 5
        elif verb == b"BDAT":
            m = re.match(rb"BDAT (\d+)", line, re.I)
            if m:
                pos += int(m.group(1))
    greeting = replies[0] if replies else []
    pairs: list[SmtpExchange] = []
    ri = 1
    for cmd in commands:
        verb = cmd.split(b" ", 1)[0].upper()
        rep = replies[ri] if ri < len(replies) else []
        ri += 1
        if verb == b"DATA" and rep and rep[0].startswith("354"):
            pairs.append(SmtpExchange(cmd, rep))
            rep2 = replies[ri] if ri < len(replies) else []
            ri += 1
            pairs.append(SmtpExchange(b"<message data>", rep2))
            continue
        pairs.append(SmtpExchange(cmd, rep))
    return greeting, pairs


def line_exchanges(c2s: bytes, s2c: bytes) -> tuple[list[str], list[tuple[bytes, str]]]:
    """Pair single-line POP3 commands with single-line replies (greeting first)."""
    rl = [text(ln) for ln in lines_of(s2c)]
    cl = lines_of(c2s)
    greeting = rl[:1]
    pairs = [(c, rl[i + 1] if i + 1 < len(rl) else "") for i, c in enumerate(cl)]
    return greeting, pairs


def parse_xclient_attrs(line: str, xtext: bool) -> list[list[str]]:
    """Split `XCLIENT a=b c=d` into [[name, value], ...] (values xtext-decoded if asked)."""
    out: list[list[str]] = []
    for tok in line.split(" ")[1:]:
        if not tok:
            continue
        name, _sep, value = tok.partition("=")
        out.append([name, xtext_decode(value) if xtext else value])
    return out


# ---------------------------------------------------------------------------------------
# Log decoding
# ---------------------------------------------------------------------------------------
KV_RE = re.compile(r"(\w+)=(<[^>]*>|[^,\s]*)")


def log_kv(line: str) -> dict[str, str]:
    """`user=<alice>, rip=1.2.3.4, ...` -> dict (angle brackets removed)."""
    out: dict[str, str] = {}
    for k, v in KV_RE.findall(line):
        if v.startswith("<") and v.endswith(">"):
            v = v[1:-1]
        out.setdefault(k, v)
    return out


def auth_kv(line: str) -> dict[str, str]:
    """Tab-separated `k=v` fields of an auth debug line (`client in:` / `master in:`)."""
    out: dict[str, str] = {}
    for part in line.split("\t"):
        k, sep, v = part.partition("=")
        if sep and k not in out:
            out[k] = v
    return out


def strip_ts(line: str) -> str:
    """Drop the `Mon DD HH:MM:SS ` prefix of a Dovecot/Postfix log line."""
    return re.sub(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ", "", line)


def login_lines_for(lines: list[str], real_ip: str, real_port: int) -> list[str]:
    """Login-service log lines of one TCP connection (matched by real_rip/real_rport)."""
    out = []
    for line in lines:
        kv = log_kv(line)
        if kv.get("real_rport") == str(real_port) and kv.get("real_rip") == real_ip:
            out.append(line)
    return out


# ---------------------------------------------------------------------------------------
# Scenario framework
# ---------------------------------------------------------------------------------------


@dataclass
class Env:
    """Run-wide state."""

    tmp: Path
    out: Path
    versions: dict[str, str]
    v6: dict[str, str]


@dataclass
class Ctx:
    """Per-scenario state: instances, roles, raw transcripts, and the result."""

    name: str
    env: Env
    root: Path
    description: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    ports: dict[str, Any] = field(default_factory=dict)
    roles: list[tuple[str, str, int, str]] = field(default_factory=list)  # (src, dst, dport, role)
    dovecots: list[Dovecot] = field(default_factory=list)
    postfix: Postfix | None = None
    sink: SmtpSink | None = None
    raws: list[dict[str, Any]] = field(default_factory=list)
    client_notes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def users_file(self) -> Path:
        """Backend passwd-file: alice / secret (plaintext scheme)."""
        mail = self.root / "mail"
        mail.mkdir(parents=True, exist_ok=True)
        os.chown(mail, NOBODY_UID, NOBODY_UID)
        path = self.root / "users"
        path.write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{NOBODY_UID}:{NOBODY_UID}::{mail}/{USER}::\n")
        return path

    def backend(
        self,
        name: str = "backend",
        listen: str = BACKEND,
        trusted: str = f"{PROXY}/32 {PROXY2}/32",
        relay: tuple[str, int] = (RELAY, RELAY_PORT),
        relay_trusted: bool = False,
    ) -> Dovecot:
        """Add a backend instance."""
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        inst = Dovecot(
            name=f"{self.name}-{name}",
            role="backend",
            root=root,
            listen=listen,
            ports=dict(BACKEND_PORTS),
            template_values=dict(
                hostname="backend.fwdaudit.test",
                trusted=trusted,
                mail_root=self.root / "mail",
                users_file=self.users_file(),
                relay_host=relay[0],
                relay_port=relay[1],
                relay_trusted="yes" if relay_trusted else "no",
            ),
        )
        self.dovecots.append(inst)
        return inst

    def proxy(
        self,
        name: str,
        listen: str,
        ports: dict[str, int],
        next_host: str,
        next_ports: dict[str, int],
        extra: dict[str, str],
        trusted: str = "",
        hostname: str = "proxy1.fwdaudit.test",
    ) -> Dovecot:
        """Add a proxy instance whose passdb sends alice to next_host."""
        root = self.root / name
        passdb = root / "passdb"
        passdb.mkdir(parents=True, exist_ok=True)
        for svc, port in next_ports.items():
            fields = [
                "proxy=y",
                f"host={next_host}",
                f"port={port}",
                "nopassword=y",
                f"source_ip={listen}",
            ]
            fields += [f"forward_{k}={v}" for k, v in extra.items()]
            (passdb / f"{svc}.passwd").write_text(f"{USER}:::::::{' '.join(fields)}\n")
        inst = Dovecot(
            name=f"{self.name}-{name}",
            role="proxy",
            root=root,
            listen=listen,
            ports=dict(ports),
            template_values=dict(hostname=hostname, trusted=trusted, passdb_dir=passdb),
        )
        self.dovecots.append(inst)
        return inst

    def role(self, src: str, dst: str, dport: int, role: str) -> None:
        """Name the role of connections from src to dst:dport."""
        self.roles.append((src, dst, dport, role))

    def role_of(self, conn: Conn) -> str:
        for src, dst, dport, role in self.roles:
            if conn.client[0] == src and conn.server == (dst, dport):
                return role
        return "unknown"

    def keep(self, r: Raw) -> None:
        """Close a raw session and keep its transcript."""
        r.close()
        self.raws.append(r.record())


@dataclass(frozen=True)
class Scenario:
    """A scenario: `setup` declares instances, roles and description; `drive` runs sessions."""

    setup: Callable[[Ctx], None]
    drive: Callable[[Ctx], None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, setup: Callable[[Ctx], None]
) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    """Register a scenario's session driver together with its setup."""

    def deco(drive: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        SCENARIOS[name] = Scenario(setup, drive)
        return drive

    return deco


def all_ports(ctx: Ctx) -> set[int]:
    """Every server port of the scenario's instances."""
    ports: set[int] = set()
    for d in ctx.dovecots:
        ports |= set(d.ports.values())
    if ctx.postfix is not None:
        ports.add(ctx.postfix.port)
    if ctx.sink is not None:
        ports.add(RELAY_PORT)
    return ports


# ---------------------------------------------------------------------------------------
# Sessions used by several scenarios
# ---------------------------------------------------------------------------------------


def imap_session(src: str, host: str, port: int) -> list[str]:
    """LOGIN, SELECT INBOX, LOGOUT with imaplib; returns the client's view."""
    notes = []
    c = BoundIMAP4(src, host, port)
    notes.append(f"greeting: {text(c.welcome)}")
    notes.append(f"LOGIN: {c.login(USER, PASSWORD)!r}")
    notes.append(f"SELECT INBOX: {c.select('INBOX')!r}")
    notes.append(f"LOGOUT: {c.logout()!r}")
    return notes


def pop3_session(src: str, host: str, port: int) -> list[str]:
    """USER/PASS, STAT, QUIT with poplib."""
    notes = []
    c = BoundPOP3(src, host, port)
    notes.append(f"greeting: {text(c.getwelcome())}")
    notes.append(f"USER: {text(c.user(USER))}")
    notes.append(f"PASS: {text(c.pass_(PASSWORD))}")
    notes.append(f"STAT: {c.stat()!r}")
    notes.append(f"QUIT: {text(c.quit())}")
    return notes


MESSAGE = (
    "From: alice@example.com\r\nTo: bob@example.com\r\nSubject: fwdaudit capture\r\n"
    "Message-ID: <fwdaudit-real@example.com>\r\n\r\nhello from the fwdaudit capture script\r\n"
)


def submission_session(src: str, host: str, port: int) -> list[str]:
    """EHLO, AUTH PLAIN, MAIL/RCPT/DATA, QUIT with smtplib."""
    notes = []
    s = smtplib.SMTP(
        host, port, local_hostname="client.fwdaudit.test", timeout=TIMEOUT, source_address=(src, 0)
    )
    notes.append(f"EHLO: {s.ehlo()!r}")
    notes.append(f"AUTH: {s.login(USER, PASSWORD)!r}")
    notes.append(f"sendmail refused: {s.sendmail('alice@example.com', ['bob@example.com'], MESSAGE)!r}")
    notes.append(f"QUIT: {s.quit()!r}")
    return notes


def lmtp_session(src: str, host: str, port: int) -> list[str]:
    """LHLO, MAIL, RCPT alice, DATA, QUIT with smtplib.LMTP."""
    notes = []
    s = smtplib.LMTP(host, port, local_hostname="mta.fwdaudit.test", source_address=(src, 0), timeout=TIMEOUT)
    notes.append(f"LHLO: {s.ehlo()!r}")
    msg = MESSAGE.replace("bob@example.com", "alice@example.com")
    notes.append(f"sendmail refused: {s.sendmail('sender@example.org', ['alice@example.com'], msg)!r}")
    notes.append(f"QUIT: {s.quit()!r}")
    return notes


def standard_pair(ctx: Ctx, backend_trusted: str = f"{PROXY}/32 {PROXY2}/32") -> tuple[Dovecot, Dovecot]:
    """Backend + first proxy on the standard IPv4 addresses, with roles."""
    b = ctx.backend(trusted=backend_trusted)
    p = ctx.proxy("proxy1", PROXY, PROXY_PORTS, BACKEND, BACKEND_PORTS, FORWARD_FIELDS)
    for proto in ("imap", "pop3", "submission", "lmtp"):
        ctx.role(CLIENT, PROXY, PROXY_PORTS[proto], "client->proxy")
        ctx.role(PROXY, BACKEND, BACKEND_PORTS[proto], "proxy->backend")
    ctx.role(BACKEND, RELAY, RELAY_PORT, "backend->relay")
    ctx.role("127.0.0.1", RELAY, RELAY_PORT, "backend->relay")
    ctx.addresses.update(client=CLIENT, proxy=PROXY, backend=BACKEND)
    ctx.ports.update(proxy=dict(PROXY_PORTS), backend=dict(BACKEND_PORTS))
    return b, p


def add_sink(ctx: Ctx) -> None:
    """Run the Python SMTP sink as the backend's submission relay."""
    ctx.sink = SmtpSink(RELAY, RELAY_PORT)
    ctx.addresses["relay"] = RELAY
    ctx.ports["relay"] = RELAY_PORT


# ---------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------


def setup_imap_proxy_trusted(ctx: Ctx) -> None:
    ctx.description = (
        "End client 127.0.0.10 -> Dovecot imap-login proxy 127.0.0.2:143 -> trusted Dovecot "
        "backend 127.0.0.3:10143. imaplib LOGIN, SELECT INBOX, LOGOUT. The proxy sends "
        "`I ID (...)` with x-session-id, x-originating-*, x-connected-*, x-proxy-ttl and "
        "x-forward-tenant/plan/region, pipelined with `L LOGIN`."
    )
    standard_pair(ctx)


@scenario("imap_proxy_trusted", setup_imap_proxy_trusted)
def drive_imap_proxy_trusted(ctx: Ctx) -> None:
    ctx.client_notes += lib_session(lambda: imap_session(CLIENT, PROXY, PROXY_PORTS["imap"]))


def setup_pop3_proxy_trusted(ctx: Ctx) -> None:
    ctx.description = (
        "End client -> Dovecot pop3-login proxy 127.0.0.2:110 -> trusted backend 127.0.0.3:10110. "
        "poplib USER/PASS, STAT, QUIT. The backend greets `+OK [XCLIENT] ...` and the proxy sends "
        "`XCLIENT ADDR= PORT= SESSION= TTL= FORWARD=<base64>` pipelined with USER."
    )
    standard_pair(ctx)


@scenario("pop3_proxy_trusted", setup_pop3_proxy_trusted)
def drive_pop3_proxy_trusted(ctx: Ctx) -> None:
    ctx.client_notes += lib_session(lambda: pop3_session(CLIENT, PROXY, PROXY_PORTS["pop3"]))


def setup_submission_proxy_trusted(ctx: Ctx) -> None:
    ctx.description = (
        "End client -> Dovecot submission-login proxy 127.0.0.2:587 -> trusted backend "
        "127.0.0.3:10587 -> relay (a Python SMTP sink on 127.0.0.5:25, the backend's "
        "submission_relay_host, submission_relay_trusted=no). smtplib EHLO, AUTH PLAIN, "
        "MAIL/RCPT/DATA, QUIT. The proxy sends XCLIENT (xtext, FORWARD=base64) then EHLO."
    )
    standard_pair(ctx)
    add_sink(ctx)


@scenario("submission_proxy_trusted", setup_submission_proxy_trusted)
def drive_submission_proxy_trusted(ctx: Ctx) -> None:
    ctx.client_notes += lib_session(lambda: submission_session(CLIENT, PROXY, PROXY_PORTS["submission"]))


def setup_lmtp_proxy(ctx: Ctx) -> None:
    ctx.description = (
        "LMTP client (smtplib.LMTP) 127.0.0.10 -> Dovecot LMTP proxy 127.0.0.2:24 (lmtp_proxy=yes, "
        "passdb proxy=y + forward_tenant/plan/region) -> trusted Dovecot LMTP backend 127.0.0.3:10024. "
        "The proxy sends XCLIENT (PROTO=LMTP, TTL=5, SESSION=<guid>:P1) and "
        "`RCPT TO:<...> XRCPTFORWARD=<xtext of the tab-separated forward list>`."
    )
    standard_pair(ctx)


@scenario("lmtp_proxy", setup_lmtp_proxy)
def drive_lmtp_proxy(ctx: Ctx) -> None:
    ctx.client_notes += lib_session(lambda: lmtp_session(CLIENT, PROXY, PROXY_PORTS["lmtp"]))


def setup_imap_untrusted(ctx: Ctx) -> None:
    ctx.description = (
        "As imap_proxy_trusted, but the backend's login_trusted_networks does NOT contain the "
        "proxy (it is 192.0.2.0/24). Dovecot 2.3.19 still answers `I OK ID completed.` and logs "
        "the proxy's address as rip; no forwarded field is applied."
    )
    standard_pair(ctx, backend_trusted="192.0.2.0/24")


@scenario("imap_untrusted_proxy", setup_imap_untrusted)
def drive_imap_untrusted(ctx: Ctx) -> None:
    ctx.client_notes += lib_session(lambda: imap_session(CLIENT, PROXY, PROXY_PORTS["imap"]))


def setup_imap_two_hop(ctx: Ctx) -> None:
    ctx.description = (
        "End client -> proxy1 127.0.0.2:143 -> proxy2 127.0.0.4:1143 -> backend 127.0.0.3:10143. "
        "proxy1's passdb sends forward_tenant/plan/region; proxy2 trusts proxy1, re-forwards what it "
        "received and adds forward_hop2=yes. TTL decreases by one per hop; the session id is kept."
    )
    ctx.backend()
    ctx.proxy("proxy1", PROXY, PROXY_PORTS, PROXY2, PROXY2_PORTS, FORWARD_FIELDS)
    ctx.proxy(
        "proxy2",
        PROXY2,
        PROXY2_PORTS,
        BACKEND,
        BACKEND_PORTS,
        {"hop2": "yes"},
        trusted=f"{PROXY}/32",
        hostname="proxy2.fwdaudit.test",
    )
    ctx.role(CLIENT, PROXY, PROXY_PORTS["imap"], "client->proxy")
    ctx.role(PROXY, PROXY2, PROXY2_PORTS["imap"], "proxy->proxy2")
    ctx.role(PROXY2, BACKEND, BACKEND_PORTS["imap"], "proxy2->backend")
    ctx.addresses.update(client=CLIENT, proxy=PROXY, proxy2=PROXY2, backend=BACKEND)
    ctx.ports.update(proxy=dict(PROXY_PORTS), proxy2=dict(PROXY2_PORTS), backend=dict(BACKEND_PORTS))


@scenario("imap_two_hop", setup_imap_two_hop)
def drive_imap_two_hop(ctx: Ctx) -> None:
    ctx.client_notes += lib_session(lambda: imap_session(CLIENT, PROXY, PROXY_PORTS["imap"]))


def id_cmd(tag: str, pairs: list[tuple[str, str]]) -> bytes:
    """Build `tag ID ("k" "v" ...)` CRLF with quoted strings."""

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    body = " ".join(f"{q(k)} {q(v)}" for k, v in pairs)
    return f"{tag} ID ({body})\r\n".encode("latin-1")


def imap_raw_case(ctx: Ctx, src: str, label: str, pairs: list[tuple[str, str]]) -> None:
    """One raw connection: greeting, `A ID (...)`, then (if still open) LOGIN and LOGOUT."""
    r = Raw(src, BACKEND, BACKEND_PORTS["imap"], label)
    try:
        r.greet(any_line)
        rep = r.send(id_cmd("A", pairs), imap_done(b"A"))
        if not r.eof and not any(ln.startswith("* BYE") for ln in rep):
            r.send(f'B LOGIN "{USER}" "{PASSWORD}"\r\n'.encode(), imap_done(b"B"))
            r.send(b"C LOGOUT\r\n", imap_done(b"C"))
    finally:
        ctx.keep(r)


IMAP_RAW_BASE = [("x-originating-ip", FORWARDED_IP), ("x-originating-port", "40001")]
IMAP_RAW_CASES: list[tuple[str, list[tuple[str, str]]]] = [
    ("value_1024", IMAP_RAW_BASE + [("x-forward-big", "a" * 1024)]),
    ("value_1025", IMAP_RAW_BASE + [("x-forward-big", "a" * 1025)]),
    ("key_30", IMAP_RAW_BASE + [("x-forward-" + "k" * 20, "v30")]),
    ("key_31", IMAP_RAW_BASE + [("x-forward-" + "k" * 21, "v31")]),
    ("pairs_31", IMAP_RAW_BASE + [(f"x-forward-p{i:02d}", str(i)) for i in range(29)]),
    ("forward_empty_name", IMAP_RAW_BASE + [("x-forward-", "x")]),
    ("forward_value_tab", IMAP_RAW_BASE + [("x-forward-t", "a\tb")]),
    ("ttl_zero", IMAP_RAW_BASE + [("x-proxy-ttl", "0")]),
    ("session_65", IMAP_RAW_BASE + [("x-session-id", "S" * 65)]),
    ("bad_originating_ip", [("x-originating-ip", "999.1.1.1"), ("x-originating-port", "40001")]),
]


def setup_imap_raw_overlimit(ctx: Ctx) -> None:
    ctx.description = (
        "Raw sockets straight to the backend imap-login 127.0.0.3:10143 from the trusted "
        "address 127.0.0.2, one connection per case (see raw_sessions[].label): ID values of "
        "1024 and 1025 octets, keys of 30 and 31 octets, 31 pairs, an empty x-forward- suffix, "
        "a TAB inside an x-forward value, x-proxy-ttl 0, a 65-char x-session-id, an invalid "
        "x-originating-ip. Every ID carries x-originating-ip 198.51.100.7 so the backend log "
        "shows whether it was applied; each case still open after ID then logs in."
    )
    ctx.backend()
    ctx.role(PROXY, BACKEND, BACKEND_PORTS["imap"], "trusted-raw->backend")
    ctx.addresses.update(trusted_raw_client=PROXY, backend=BACKEND)
    ctx.ports.update(backend={"imap": BACKEND_PORTS["imap"]})


@scenario("imap_raw_overlimit", setup_imap_raw_overlimit)
def drive_imap_raw_overlimit(ctx: Ctx) -> None:
    for label, pairs in IMAP_RAW_CASES:
        imap_raw_case(ctx, PROXY, label, pairs)


def pop3_raw_case(ctx: Ctx, src: str, label: str, xclient: bytes) -> None:
    """One raw POP3 connection: greeting, XCLIENT, then (if still open) USER/PASS/QUIT."""
    r = Raw(src, BACKEND, BACKEND_PORTS["pop3"], label)
    try:
        r.greet(pop3_done)
        rep = r.send(xclient, pop3_done)
        if not r.eof and rep and "Input buffer full" not in rep[0]:
            r.send(f"USER {USER}\r\n".encode(), pop3_done)
            r.send(f"PASS {PASSWORD}\r\n".encode(), pop3_done)
            r.send(b"QUIT\r\n", pop3_done)
    finally:
        ctx.keep(r)


# Longest XCLIENT line (before CRLF) pop3-login 2.3.19 accepted when probed: the 1026-byte
# login input buffer (LOGIN_MAX_INBUF_SIZE) plus the 8 bytes of "XCLIENT " that the command
# reader consumes before it needs the arguments + CRLF in the buffer. 1033 gives
# "-ERR Input buffer full, aborting".
POP3_MAX_LINE = 1032  # probed on 2.3.19: 1033 gives "-ERR Input buffer full, aborting"


def pop3_sized_xclient(total: int) -> bytes:
    """An XCLIENT line of exactly `total` octets before CRLF (valid base64 FORWARD)."""
    head = f"XCLIENT ADDR={FORWARDED_IP} PORT=40002 FORWARD="
    room = total - len(head)
    blob = base64.b64encode(b"big=" + b"x" * (room // 4 * 3 - 4)).decode()
    line = head + blob
    line += " " * (total - len(line))  # empty tokens are ignored by cmd_xclient()
    return (line + "\r\n").encode()


def setup_pop3_raw_overlimit(ctx: Ctx) -> None:
    ctx.description = (
        "Raw sockets straight to the backend pop3-login 127.0.0.3:10110, from the trusted "
        "127.0.0.2 and from the untrusted 127.0.0.10 (one connection per case, see "
        "raw_sessions[].label): a valid XCLIENT (control), XCLIENT lines of 1032 and 1033 octets "
        "(before CRLF; 1032 is the longest accepted), FORWARD with bad base64, ADDR=IPV6:...; each case still open afterwards "
        "logs in with USER/PASS (the Login line shows what was applied)."
    )
    ctx.backend()
    ctx.role(PROXY, BACKEND, BACKEND_PORTS["pop3"], "trusted-raw->backend")
    ctx.role(CLIENT, BACKEND, BACKEND_PORTS["pop3"], "untrusted-raw->backend")
    ctx.addresses.update(trusted_raw_client=PROXY, untrusted_raw_client=CLIENT, backend=BACKEND)
    ctx.ports.update(backend={"pop3": BACKEND_PORTS["pop3"]})


@scenario("pop3_raw_overlimit", setup_pop3_raw_overlimit)
def drive_pop3_raw_overlimit(ctx: Ctx) -> None:
    good_fwd = base64.b64encode(b"tenant=raw\tplan=test").decode()

    def xc(attrs: str) -> bytes:
        return f"XCLIENT {attrs}\r\n".encode()

    valid = xc(f"ADDR={FORWARDED_IP} PORT=40002 SESSION=rawpop3session01 TTL=3 FORWARD={good_fwd}")
    for who, src in (("trusted", PROXY), ("untrusted", CLIENT)):
        pop3_raw_case(ctx, src, f"{who}_valid", valid)
        pop3_raw_case(ctx, src, f"{who}_line_{POP3_MAX_LINE}", pop3_sized_xclient(POP3_MAX_LINE))
        pop3_raw_case(ctx, src, f"{who}_line_{POP3_MAX_LINE + 1}", pop3_sized_xclient(POP3_MAX_LINE + 1))
        pop3_raw_case(
            ctx, src, f"{who}_bad_base64", xc(f"ADDR={FORWARDED_IP} PORT=40002 FORWARD=!!not*base64")
        )
        pop3_raw_case(ctx, src, f"{who}_addr_ipv6_prefix", xc("ADDR=IPV6:2001:db8::7 PORT=40002"))


def setup_postfix_xclient(ctx: Ctx) -> None:
    ctx.description = (
        "A private Postfix smtpd on 127.0.0.6:25 with smtpd_authorized_xclient_hosts = "
        "127.0.0.2 127.0.0.1. Raw sessions (see raw_sessions[].label): XCLIENT from the "
        "authorized 127.0.0.2 (220; a second XCLIENT after ADDR changed gets 550), from the "
        "unauthorized 127.0.0.10 (550 5.7.0), with Dovecot-only attributes TTL/SESSION/FORWARD "
        "(501 Bad XCLIENT attribute name), with a bare IPv6 ADDR (501 Bad ADDR syntax) and with "
        "PROTO=LMTP (501 Bad PROTO syntax). Then a real Dovecot submission backend (client "
        "127.0.0.10 -> 127.0.0.3:10587, AUTH, MAIL/RCPT/DATA) relaying to this Postfix with "
        "submission_relay_trusted=yes, so Dovecot's lib-smtp client sends XCLIENT to Postfix."
    )
    ctx.postfix = Postfix(ctx.root / "postfix", MTA, MTA_PORT, f"{PROXY} 127.0.0.1")
    ctx.backend(relay=(MTA, MTA_PORT), relay_trusted=True)
    ctx.role(PROXY, MTA, MTA_PORT, "authorized-raw->postfix")
    ctx.role(CLIENT, MTA, MTA_PORT, "unauthorized-raw->postfix")
    ctx.role("127.0.0.1", MTA, MTA_PORT, "backend->postfix")
    ctx.role(BACKEND, MTA, MTA_PORT, "backend->postfix")
    ctx.role(CLIENT, BACKEND, BACKEND_PORTS["submission"], "client->backend")
    ctx.addresses.update(
        mta=MTA, authorized_raw_client=PROXY, unauthorized_raw_client=CLIENT, backend=BACKEND, client=CLIENT
    )
    ctx.ports.update(mta=MTA_PORT, backend={"submission": BACKEND_PORTS["submission"]})


@scenario("postfix_xclient", setup_postfix_xclient)
def drive_postfix_xclient(ctx: Ctx) -> None:
    def sess(src: str, label: str, cmds: list[str]) -> None:
        r = Raw(src, MTA, MTA_PORT, label)
        try:
            r.greet(smtp_done)
            for c in cmds:
                r.send(c.encode() + b"\r\n", smtp_done)
                if r.eof:
                    break
        finally:
            ctx.keep(r)

    ehlo = "EHLO proxy1.fwdaudit.test"
    good = (
        f"XCLIENT NAME=client.fwdaudit.test ADDR={FORWARDED_IP} PORT=40003 "
        "HELO=client.fwdaudit.test PROTO=ESMTP"
    )
    sess(PROXY, "authorized", [ehlo, good, ehlo, f"XCLIENT ADDR={SPOOFED_IP}", "QUIT"])
    sess(CLIENT, "unauthorized", ["EHLO client.fwdaudit.test", f"XCLIENT ADDR={FORWARDED_IP}", "QUIT"])
    dovecot_only = (
        f"XCLIENT ADDR={FORWARDED_IP} PORT=40003 TTL=4 SESSION=AbCdEfGhIjKlMnOp FORWARD=dGVuYW50PWFjbWU+3D"
    )
    sess(PROXY, "dovecot_only_attributes", [ehlo, dovecot_only, "QUIT"])
    sess(PROXY, "bare_ipv6_addr", [ehlo, "XCLIENT ADDR=2001:db8::7", "QUIT"])
    sess(PROXY, "proto_lmtp", [ehlo, "XCLIENT PROTO=LMTP", "QUIT"])
    ctx.client_notes += lib_session(lambda: submission_session(CLIENT, BACKEND, BACKEND_PORTS["submission"]))


def setup_imap_ipv6(ctx: Ctx) -> None:
    v6 = ctx.env.v6
    ctx.description = (
        f"imap_proxy_trusted over IPv6: client {v6['client']} -> proxy [{v6['proxy']}]:143 -> "
        f"backend [{v6['backend']}]:10143. x-originating-ip is a bare IPv6 address and the "
        "session id is 32 base64 characters (24 raw bytes)."
    )
    ctx.backend(listen=v6["backend"], trusted=f"{v6['proxy']}/128")
    ctx.proxy("proxy1", v6["proxy"], PROXY_PORTS, v6["backend"], BACKEND_PORTS, FORWARD_FIELDS)
    ctx.role(v6["client"], v6["proxy"], PROXY_PORTS["imap"], "client->proxy")
    ctx.role(v6["proxy"], v6["backend"], BACKEND_PORTS["imap"], "proxy->backend")
    ctx.addresses.update(client=v6["client"], proxy=v6["proxy"], backend=v6["backend"])
    ctx.ports.update(proxy=dict(PROXY_PORTS), backend=dict(BACKEND_PORTS))
    if v6["client"] == v6["proxy"]:
        ctx.notes.append("could not add fd00:fa:: addresses to lo; every endpoint is ::1")


@scenario("imap_ipv6", setup_imap_ipv6)
def drive_imap_ipv6(ctx: Ctx) -> None:
    v6 = ctx.env.v6
    ctx.client_notes += lib_session(lambda: imap_session(v6["client"], v6["proxy"], PROXY_PORTS["imap"]))


SPOOF_ID = [
    ("name", "fwdaudit-spoofer"),
    ("x-originating-ip", SPOOFED_IP),
    ("x-originating-port", "4444"),
    ("x-session-id", "spoofedsession01"),
    ("x-proxy-ttl", "1"),
    ("x-forward-tenant", "evil"),
]


def setup_imap_client_spoof(ctx: Ctx) -> None:
    ctx.description = (
        "An end client (127.0.0.10, untrusted) sends its own ID with x-originating-ip/port, "
        "x-session-id, x-proxy-ttl and x-forward-tenant=evil straight to the proxy, then logs in. "
        "The proxy ignores the keys (client not trusted) and forwards the real client address. A "
        "second connection sends the same ID straight to the backend from the same untrusted "
        "address: ignored too, the backend logs rip=127.0.0.10."
    )
    standard_pair(ctx)
    ctx.role(CLIENT, BACKEND, BACKEND_PORTS["imap"], "client->backend")


@scenario("imap_client_spoof", setup_imap_client_spoof)
def drive_imap_client_spoof(ctx: Ctx) -> None:
    for label, host, port in (
        ("spoof_to_proxy", PROXY, PROXY_PORTS["imap"]),
        ("spoof_to_backend", BACKEND, BACKEND_PORTS["imap"]),
    ):
        r = Raw(CLIENT, host, port, label)
        try:
            r.greet(any_line)
            r.send(id_cmd("a1", SPOOF_ID), imap_done(b"a1"))
            r.send(f'a2 LOGIN "{USER}" "{PASSWORD}"\r\n'.encode(), imap_done(b"a2"))
            r.send(b"a3 SELECT INBOX\r\n", imap_done(b"a3"))
            r.send(b"a4 LOGOUT\r\n", imap_done(b"a4"))
        finally:
            ctx.keep(r)


def setup_plain_noise(ctx: Ctx) -> None:
    ctx.description = (
        "Negatives: ordinary sessions from the end client 127.0.0.10 straight to the backend, no "
        "proxy, no forwarding: IMAP with a benign client ID (name/version) + LOGIN/SELECT/LOGOUT, "
        "IMAP without ID, POP3 USER/PASS/STAT/QUIT, submission EHLO/AUTH/MAIL/RCPT/DATA (relayed "
        "to the Python sink), LMTP delivery. The backend advertises no XCLIENT to this client."
    )
    ctx.backend()
    add_sink(ctx)
    for proto in ("imap", "pop3", "submission", "lmtp"):
        ctx.role(CLIENT, BACKEND, BACKEND_PORTS[proto], "client->backend")
    ctx.role(BACKEND, RELAY, RELAY_PORT, "backend->relay")
    ctx.role("127.0.0.1", RELAY, RELAY_PORT, "backend->relay")
    ctx.addresses.update(client=CLIENT, backend=BACKEND)
    ctx.ports.update(backend=dict(BACKEND_PORTS))


@scenario("plain_noise", setup_plain_noise)
def drive_plain_noise(ctx: Ctx) -> None:
    r = Raw(CLIENT, BACKEND, BACKEND_PORTS["imap"], "imap_benign_id")
    try:
        r.greet(any_line)
        r.send(id_cmd("1", [("name", "fwdaudit-mua"), ("version", "1.0")]), imap_done(b"1"))
        r.send(f'2 LOGIN "{USER}" "{PASSWORD}"\r\n'.encode(), imap_done(b"2"))
        r.send(b"3 SELECT INBOX\r\n", imap_done(b"3"))
        r.send(b"4 LOGOUT\r\n", imap_done(b"4"))
    finally:
        ctx.keep(r)
    ctx.client_notes += lib_session(lambda: imap_session(CLIENT, BACKEND, BACKEND_PORTS["imap"]))
    ctx.client_notes += lib_session(lambda: pop3_session(CLIENT, BACKEND, BACKEND_PORTS["pop3"]))
    ctx.client_notes += lib_session(lambda: submission_session(CLIENT, BACKEND, BACKEND_PORTS["submission"]))
    ctx.client_notes += lib_session(lambda: lmtp_session(CLIENT, BACKEND, BACKEND_PORTS["lmtp"]))


def lib_session(fn: Callable[[], list[str]]) -> list[str]:
    """Run a library-client session; a protocol error becomes a note, not a crash."""
    try:
        return fn()
    except (imaplib.IMAP4.error, poplib.error_proto, smtplib.SMTPException, OSError) as exc:
        return [f"client error: {type(exc).__name__}: {exc}"]


# ---------------------------------------------------------------------------------------
# Collection: wire + logs -> must_show
# ---------------------------------------------------------------------------------------


def proto_of_port(port: int) -> str:
    """Protocol served on a port in these scenarios."""
    for table in (BACKEND_PORTS, PROXY_PORTS, PROXY2_PORTS):
        for proto, p in table.items():
            if p == port:
                return proto
    if port in (RELAY_PORT, MTA_PORT):
        return "smtp"
    return "unknown"


def instance_logs(ctx: Ctx) -> dict[str, list[str]]:
    """All logs of the scenario, keyed by instance name."""
    out = {d.name.removeprefix(ctx.name + "-"): d.log_lines() for d in ctx.dovecots}
    if ctx.postfix is not None:
        out["postfix"] = ctx.postfix.log_lines()
    return out


def owner_of(ctx: Ctx, ip: str, port: int) -> str | None:
    """The instance (name) serving ip:port."""
    for d in ctx.dovecots:
        if str(ipaddress.ip_address(d.listen)) == ip and port in d.ports.values():
            return d.name.removeprefix(ctx.name + "-")
    if ctx.postfix is not None and ip == ctx.postfix.listen and port == ctx.postfix.port:
        return "postfix"
    return None


RELEVANT_LOG = re.compile(
    r"Login: |Disconnected|Aborted login|ID sent: |client in: AUTH|client passdb out|"
    r"master in: USER|userdb out|Started proxying|proxy\(|Received new command: (XCLIENT|RCPT|MAIL|LHLO|EHLO)|"
    r"command XCLIENT|command RCPT|Connect from|saved mail|relayed|Invalid|trusted|ignoring|"
    r"smtpd\[|forward|ttl|TTL",
    re.I,
)


def relevant(lines: list[str]) -> list[str]:
    """Drop noisy debug lines, keep those an auditor cares about (timestamps stripped)."""
    out = []
    for line in lines:
        s = strip_ts(line)
        if "Module loaded" in s or "Loading modules" in s or "auth token secret" in s:
            continue
        if RELEVANT_LOG.search(s):
            out.append(s)
    return out


def postfix_sessions(lines: list[str]) -> list[list[str]]:
    """Split Postfix smtpd log lines into sessions (`connect from` .. `disconnect from`)."""
    sessions: list[list[str]] = []
    cur: list[str] | None = None
    for line in lines:
        s = strip_ts(line)
        if "/smtpd[" not in s:
            continue
        body = s.split("]: ", 1)[-1]
        if body.startswith("connect from "):
            cur = [s]
            sessions.append(cur)
        elif cur is not None:
            if body.startswith(("< ", "> ", "disconnect from", "warning", "NOQUEUE", "reject")) or re.match(
                r"[0-9A-F]{6,}: ", body
            ):
                cur.append(s)
            if body.startswith("disconnect from"):
                cur = None
    return sessions


def postfix_xclient_results(session: list[str]) -> list[dict[str, str]]:
    """For every XCLIENT in a Postfix session: the reply and the client identity that followed."""
    out: list[dict[str, str]] = []
    for i, s in enumerate(session):
        body = s.split("]: ", 1)[-1]
        m = re.match(r"< (\S+)\[([^\]]*)\]: (XCLIENT .*)", body, re.I)
        if not m:
            continue
        for later in session[i + 1 :]:
            lb = later.split("]: ", 1)[-1]
            r = re.match(r"> (\S+)\[([^\]]*)\]: (.*)", lb)
            if r:
                out.append(
                    {
                        "command": m.group(3),
                        "before": f"{m.group(1)}[{m.group(2)}]",
                        "reply": r.group(3),
                        "name": r.group(1),
                        "addr": r.group(2),
                    }
                )
                break
    return out


def conn_log(ctx: Ctx, conn: Conn, logs: dict[str, list[str]], pf_index: int) -> dict[str, Any]:
    """Log facts of the server side of one connection (login services, LMTP, Postfix)."""
    owner = owner_of(ctx, *conn.server)
    if owner is None:
        return {}
    lines = logs.get(owner, [])
    proto = proto_of_port(conn.server[1])
    facts: dict[str, Any] = {"instance": owner}
    if owner == "postfix":
        sessions = postfix_sessions(lines)
        if pf_index < len(sessions):
            facts["lines"] = sessions[pf_index]
            facts["postfix_xclient"] = postfix_xclient_results(sessions[pf_index])
        return facts
    if proto in ("imap", "pop3", "submission"):
        mine = login_lines_for(lines, conn.client[0], conn.client[1])
        facts["lines"] = [strip_ts(ln) for ln in mine]
        for line in mine:
            body = strip_ts(line)
            if "Login: " in body or "Started proxying" in body:
                facts["login"] = log_kv(body.split(": ", 2)[-1])
                facts["login_line"] = "Started proxying" if "Started proxying" in body else "Login"
            elif "ID sent: " in body:
                facts["id_sent"] = body
        if "login" not in facts:
            # No login: the disconnect line still carries what the backend had applied.
            for line in mine:
                body = strip_ts(line)
                if "Disconnected" in body or "Aborted login" in body:
                    facts["login"] = log_kv(body.rsplit("): ", 1)[-1])
                    facts["login_line"] = "Disconnected (no login)"
        sess = facts.get("login", {}).get("session")
        if sess is None:
            for line in mine:
                s = log_kv(line).get("session")
                if s:
                    sess = s
                    break
        if sess:
            auth = [ln for ln in lines if "client in: AUTH" in ln and f"session={sess}\t" in ln]
            if auth:
                facts["auth_request"] = {k: v for k, v in auth_kv(strip_ts(auth[0])).items() if k != "resp"}
                if strip_ts(auth[0]) not in facts["lines"]:
                    facts["lines"].append(strip_ts(auth[0]))
        return facts
    if proto == "lmtp":
        facts["lines"] = [
            strip_ts(ln)
            for ln in lines
            if re.search(r"lmtp\(|master in: USER|userdb out|passdb out", ln) and "auth-master" not in ln
        ]
        users = [ln for ln in lines if "master in: USER" in ln and "service=lmtp" in ln]
        if users:
            facts["userdb_request"] = auth_kv(strip_ts(users[0]))
        for ln in lines:
            m = re.search(r"lmtp\([^)]*\)<\d+><([^>]*)>.*saved mail", ln)
            if m:
                facts["delivery_session"] = m.group(1)
                break
        return facts
    return {}


def extract_forwarding(ctx: Ctx, conn: Conn, role: str) -> list[dict[str, Any]]:
    """Decode the forwarding commands of one connection (ID / XCLIENT / XRCPTFORWARD)."""
    proto = proto_of_port(conn.server[1])
    out: list[dict[str, Any]] = []
    c2s, s2c = conn.c2s, conn.s2c
    if proto == "imap":
        for cmd in imap_id_commands(c2s):
            keys = {str(k).lower(): v for k, v in cmd["pairs"] if k is not None}
            reply = imap_reply_for(s2c, cmd["tag"])
            forward = {
                str(k)[len("x-forward-") :]: v
                for k, v in cmd["pairs"]
                if k is not None and str(k).lower().startswith("x-forward-")
            }
            entry: dict[str, Any] = {
                "carrier": "ID",
                "forwarding_keys": any(k.startswith("x-") for k in keys),
                "tag": cmd["tag"],
                "command": cmd["raw"],
                "command_len": cmd["raw_len"],
                "attributes": cmd["pairs"],
                "value_forms": sorted(set(cmd["value_forms"])),
                "client_ip": keys.get("x-originating-ip"),
                "client_port": _int(keys.get("x-originating-port")),
                "connected_ip": keys.get("x-connected-ip"),
                "connected_port": _int(keys.get("x-connected-port")),
                "session_id": keys.get("x-session-id"),
                "ttl": _int(keys.get("x-proxy-ttl")),
                "forward": forward,
                "reply": reply,
                "reply_ok": bool(reply) and reply[-1].startswith(f"{cmd['tag']} OK"),
            }
            if cmd["parse_error"]:
                entry["parse_error"] = cmd["parse_error"]
            out.append(entry)
    elif proto == "pop3":
        greeting, pairs = line_exchanges(c2s, s2c)
        for raw_cmd, rep in pairs:
            line = text(raw_cmd)
            if not line.upper().startswith("XCLIENT"):
                continue
            attrs = parse_xclient_attrs(line, xtext=False)
            d = {k.upper(): v for k, v in attrs}
            fwd, err = b64_forward(d["FORWARD"]) if "FORWARD" in d else ({}, "")
            entry = {
                "carrier": "XCLIENT",
                "greeting": greeting,
                "command": line,
                "command_len": len(raw_cmd),
                "attributes": attrs,
                "client_ip": d.get("ADDR"),
                "client_port": _int(d.get("PORT")),
                "session_id": d.get("SESSION"),
                "ttl": _int(d.get("TTL")),
                "forward": fwd,
                "reply": [rep],
                "reply_ok": rep.startswith("+OK"),
            }
            if err:
                entry["forward_error"] = err
            out.append(entry)
    elif proto in ("submission", "lmtp", "smtp"):
        greeting, exch = smtp_exchanges(c2s, s2c)
        advertised: list[str] = []
        for ex in exch:
            verb = ex.command.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"LHLO"):
                advertised = [
                    ln[4:] for ln in ex.reply if ln[4:].upper().startswith(("XCLIENT", "XRCPTFORWARD"))
                ]
            line = text(ex.command)
            if verb == b"XCLIENT":
                attrs = parse_xclient_attrs(line, xtext=True)
                d = {k.upper(): v for k, v in attrs}
                fwd2: dict[str, str] | None = {}
                err = ""
                if "FORWARD" in d:
                    fwd2, err = b64_forward(d["FORWARD"])
                entry = {
                    "carrier": "XCLIENT",
                    "command": line,
                    "command_len": len(ex.command),
                    "advertised": advertised,
                    "attributes": attrs,
                    "client_ip": d.get("ADDR"),
                    "client_port": _int(d.get("PORT")),
                    "helo": d.get("HELO"),
                    "proto": d.get("PROTO"),
                    "login": d.get("LOGIN"),
                    "session_id": d.get("SESSION"),
                    "ttl": _int(d.get("TTL")),
                    "forward": fwd2,
                    "reply": ex.reply,
                    "reply_ok": bool(ex.reply) and ex.reply[0].startswith("220"),
                }
                if err:
                    entry["forward_error"] = err
                out.append(entry)
            elif verb == b"RCPT" and b"XRCPTFORWARD=" in ex.command.upper():
                m = re.search(r"XRCPTFORWARD=(\S+)", line, re.I)
                wire_value = m.group(1) if m else ""
                decoded = xtext_decode(wire_value)
                out.append(
                    {
                        "carrier": "XRCPTFORWARD",
                        "command": line,
                        "advertised": advertised,
                        "value_wire": wire_value,
                        "value_decoded": decoded,
                        "forward": forward_list(decoded),
                        "reply": ex.reply,
                        "reply_ok": bool(ex.reply) and ex.reply[0].startswith("250"),
                    }
                )
    for e in out:
        e["connection"] = conn.index
        e["role"] = role
        e["protocol"] = proto
    return out


def _int(v: str | None) -> int | None:
    if v is None or not re.fullmatch(r"\d{1,10}", v):
        return None
    return int(v)


def backend_applied(facts: dict[str, Any]) -> dict[str, Any] | None:
    """What the receiving server's log says it applied for this connection."""
    if "login" in facts:
        kv = facts["login"]
        fwd = {k[len("forward_") :]: v for k, v in kv.items() if k.startswith("forward_") and v}
        applied: dict[str, Any] = {
            "source": f"{facts['instance']} log: {facts['login_line']} line (login_log_format_elements)",
            "rip": kv.get("rip"),
            "rport": _int(kv.get("rport")),
            "lip": kv.get("lip"),
            "lport": _int(kv.get("lport")),
            "real_rip": kv.get("real_rip"),
            "real_rport": _int(kv.get("real_rport")),
            "session": kv.get("session"),
            "forward_in_login_line": fwd,
        }
        ar = facts.get("auth_request")
        if ar is not None:
            # The auth protocol line is itself tab-escaped: unescape once to get the
            # forward_fields value, then split it on TAB (forward_list unescapes each).
            raw_ff = ar.get("forward_fields")
            applied["auth_forward_fields"] = None if raw_ff is None else tab_unescape(raw_ff)
            applied["forward"] = forward_list(tab_unescape(raw_ff or ""))
        else:
            applied["forward"] = fwd
        return applied
    if "userdb_request" in facts:
        ur = facts["userdb_request"]
        raw_ff = ur.get("forward_fields")
        return {
            "source": f"{facts['instance']} log: auth `master in: USER` (LMTP recipient lookup) + lmtp log prefix",
            "rip": ur.get("rip"),
            "rport": _int(ur.get("rport")),
            "lip": ur.get("lip"),
            "lport": _int(ur.get("lport")),
            "session": facts.get("delivery_session"),
            "auth_forward_fields": None if raw_ff is None else tab_unescape(raw_ff),
            "forward": forward_list(tab_unescape(raw_ff or "")),
        }
    return None


def applied_fields(entry: dict[str, Any], applied: dict[str, Any] | None) -> dict[str, bool]:
    """Per forwarded field: did the server log the value that was on the wire?"""
    out: dict[str, bool] = {}
    if applied is None:
        return out
    if entry.get("client_ip") is not None:
        out["client_ip"] = _same_ip(entry["client_ip"], applied.get("rip"))
    if entry.get("client_port") is not None:
        out["client_port"] = entry["client_port"] == applied.get("rport")
    if entry.get("session_id") is not None and applied.get("session") is not None:
        out["session_id"] = entry["session_id"] == applied["session"]
    if entry.get("forward"):
        out["forward"] = entry["forward"] == applied.get("forward")
    return out


def collect(ctx: Ctx, conns: list[Conn]) -> dict[str, Any]:
    """Build the connections / must_show part of expected.json for one scenario."""
    logs = instance_logs(ctx)
    connections = []
    forwarding: list[dict[str, Any]] = []
    problems: list[str] = []
    pf_index = 0
    raw_by_client = {r["client"]: r for r in ctx.raws}
    for conn in conns:
        role = ctx.role_of(conn)
        proto = proto_of_port(conn.server[1])
        facts = conn_log(ctx, conn, logs, pf_index)
        if facts.get("instance") == "postfix":
            pf_index += 1
        cinfo: dict[str, Any] = {
            "index": conn.index,
            "client": fmt_ep(*conn.client),
            "server": fmt_ep(*conn.server),
            "role": role,
            "protocol": proto,
            "first_frame": conn.first_frame,
            "bytes_c2s": len(conn.c2s),
            "bytes_s2c": len(conn.s2c),
            "closed_by": conn.closed_by,
        }
        raw = raw_by_client.get(cinfo["client"])
        if raw is not None:
            raw["connection"] = conn.index
            cinfo["raw_label"] = raw["label"]
        applied = backend_applied(facts)
        if applied is not None:
            cinfo["server_applied"] = applied
        if facts.get("lines"):
            cinfo["server_log"] = facts["lines"]
        connections.append(cinfo)
        pf_results = list(facts.get("postfix_xclient", []))
        for entry in extract_forwarding(ctx, conn, role):
            if entry["carrier"] == "XCLIENT" and facts.get("instance") == "postfix":
                res = pf_results.pop(0) if pf_results else None
                entry["server_applied"] = res
                fields: dict[str, bool] = {}
                if res is not None and entry.get("client_ip"):
                    fields["client_ip"] = _same_ip(entry["client_ip"].removeprefix("IPV6:"), res["addr"])
                entry["applied"] = fields
                entry["accepted"] = bool(entry["reply_ok"] and fields.get("client_ip", True))
            else:
                fields = applied_fields(entry, applied)
                entry["server_applied"] = applied
                entry["applied"] = fields
                if entry["carrier"] == "ID" and not entry["forwarding_keys"]:
                    entry["accepted"] = None
                elif applied is None:
                    entry["accepted"] = None
                elif entry["carrier"] == "XRCPTFORWARD":
                    entry["accepted"] = bool(entry["reply_ok"] and fields.get("forward"))
                elif "client_ip" in fields:
                    entry["accepted"] = fields["client_ip"]
                elif "forward" in fields:
                    entry["accepted"] = fields["forward"]
                else:
                    entry["accepted"] = None
            if role.startswith(("proxy", "backend->")) and entry["accepted"] is not None:
                # Commands a real Dovecot sent must be applied field by field when accepted.
                bad = [k for k, ok in entry["applied"].items() if not ok]
                if entry["accepted"] and bad:
                    problems.append(f"conn {conn.index} {entry['carrier']}: not applied: {bad}")
            forwarding.append(entry)
    replies = [
        {
            "label": r["label"],
            "connection": r.get("connection"),
            "greeting": r["greeting"],
            "replies": [{"sent": e.get("sent", ""), "reply": e["reply"]} for e in r["exchanges"]],
        }
        for r in ctx.raws
    ]
    return {
        "connections": connections,
        "forwarding": forwarding,
        "replies": replies,
        "checks": problems,
        "logs": logs,
    }


def _same_ip(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def setup_v6() -> tuple[dict[str, str], list[str]]:
    """Add fd00:fa::/64 host addresses to lo; fall back to ::1 for all endpoints."""
    added: list[str] = []
    want = {"client": V6_CLIENT, "proxy": V6_PROXY, "backend": V6_BACKEND}
    present = run(["ip", "-6", "addr", "show", "dev", "lo"], check=False).stdout
    for addr in want.values():
        if f"inet6 {addr}/" in present:
            continue
        res = run(["ip", "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad"], check=False)
        if res.returncode != 0:
            for a in added:
                run(["ip", "-6", "addr", "del", f"{a}/128", "dev", "lo"], check=False)
            log(f"cannot add IPv6 addresses ({res.stderr.strip()}); using ::1")
            return {k: LOOPBACK_V6 for k in want}, []
        added.append(addr)
    return want, added


def scrub(obj: object, tmp: str) -> Any:
    """Replace the run's temp dir in every string by `$TMP` (paths differ per run)."""
    if isinstance(obj, str):
        return obj.replace(tmp, "$TMP")
    if isinstance(obj, list):
        return [scrub(v, tmp) for v in obj]
    if isinstance(obj, dict):
        return {k: scrub(v, tmp) for k, v in obj.items()}
    return obj


JSON_INLINE = 100  # characters: shorter lists/objects are written on one line


def dump_json(obj: object, indent: int = 0) -> str:
    """JSON with 2-space indentation, but short containers kept on one line."""
    flat = json.dumps(obj, ensure_ascii=True)
    if not isinstance(obj, (dict, list)) or len(flat) + indent <= JSON_INLINE or not obj:
        return flat
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dump_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dump_json(v, indent + 2) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


MAX_ATTEMPTS = 3  # a scenario whose capture lost packets is recorded again


def record_once(name: str, env: Env, attempt: int) -> tuple[Ctx, list[Conn], str, list[str]]:
    """Start the scenario's servers, capture its sessions, stop everything."""
    root = env.tmp / f"{name}.{attempt}"
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    ctx = Ctx(name=name, env=env, root=root)
    pcap = env.out / f"{name}.pcap"
    sc = SCENARIOS[name]
    sc.setup(ctx)
    stats = ""
    try:
        for d in ctx.dovecots:
            d.start()
        if ctx.postfix is not None:
            ctx.postfix.start()
        if ctx.sink is not None:
            ctx.sink.start()
        with Capture(pcap, all_ports(ctx)) as cap:
            sc.drive(ctx)
        stats = cap.stats
    finally:
        if ctx.sink is not None:
            ctx.sink.stop()
        stoppers: list[Callable[[], None]] = [d.stop for d in ctx.dovecots]
        if ctx.postfix is not None:
            stoppers.append(ctx.postfix.stop)
        # Each master takes about 3 s to shut down: stop them all at once.
        threads = [threading.Thread(target=fn) for fn in stoppers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    conns = read_pcap(pcap)
    return ctx, conns, stats, capture_problems(conns, stats)


def capture_problems(conns: list[Conn], stats: str) -> list[str]:
    """Reasons to distrust a capture: kernel drops, sequence gaps, half-seen handshakes."""
    problems: list[str] = []
    m = re.search(r"(\d+) packets dropped by kernel", stats)
    if m is None:
        problems.append(f"no tcpdump statistics: {stats!r}")
    elif int(m.group(1)):
        problems.append(f"{m.group(1)} packets dropped by kernel")
    if not conns:
        problems.append("no TCP connection captured")
    for c in conns:
        _ = (c.c2s, c.s2c)
        if False not in c.isn:
            problems.append(f"conn {c.index}: no SYN-ACK")
        for to_server, off, length in c.gaps:
            problems.append(f"conn {c.index}: {'c2s' if to_server else 's2c'} gap of {length} at {off}")
        if not c.closed_by:
            problems.append(f"conn {c.index}: no FIN/RST seen")
    return problems


def run_scenario(name: str, env: Env) -> dict[str, Any]:
    """Record a scenario (again if the capture lost packets) and write its expected.json."""
    t0 = time.monotonic()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        ctx, conns, stats, problems = record_once(name, env, attempt)
        if not problems:
            break
        log(f"  attempt {attempt}: capture problems {problems}")
    pcap = env.out / f"{name}.pcap"
    st = env.out.stat()
    os.chown(pcap, st.st_uid, st.st_gid)  # tcpdump -w drops privileges to user tcpdump
    body = collect(ctx, conns)
    stats_lines = [ln for ln in stats.splitlines() if "packets" in ln]
    expected: dict[str, Any] = {
        "scenario": name,
        "description": ctx.description,
        "dovecot_version": env.versions.get("dovecot"),
        "postfix_version": env.versions.get("postfix"),
        "versions": env.versions,
        "pcap": pcap.name,
        "pcap_bytes": pcap.stat().st_size,
        "tcpdump": {
            "command": f"tcpdump -i lo -n -B {TCPDUMP_BUFFER_KIB} -w {pcap.name} -s 0 -U '<filter>'",
            "filter": Capture(pcap, all_ports(ctx)).filter,
            "stats": stats_lines,
            "attempts": attempt,
            "capture_problems": problems,
        },
        "addresses": ctx.addresses,
        "ports": ctx.ports,
        "connections": body["connections"],
        "must_show": {"forwarding": body["forwarding"], "raw_replies": body["replies"]},
        "raw_sessions": ctx.raws,
        "client_view": ctx.client_notes,
        "backend_log": relevant(body["logs"].get("backend", [])),
        "other_logs": {
            k: ([ln for s in postfix_sessions(v) for ln in s] if k == "postfix" else relevant(v))
            for k, v in body["logs"].items()
            if k != "backend"
        },
        "cross_check_problems": body["checks"],
        "notes": ctx.notes,
        "run_seconds": round(time.monotonic() - t0, 2),
    }
    out = env.out / f"{name}.expected.json"
    out.write_text(dump_json(scrub(expected, str(env.tmp))) + "\n")
    return expected


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help="apt-get install the servers if missing")
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: this directory)")
    ap.add_argument("--only", action="append", default=[], help="scenario name(s), comma separated")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = ap.parse_args(argv)

    def on_sigterm(_sig: int, _frame: object) -> None:
        raise SystemExit(143)  # unwinds through the finally blocks that stop the servers

    signal.signal(signal.SIGTERM, on_sigterm)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if os.geteuid() != 0:
        log("must run as root (tcpdump, ports < 1024, dovecot/postfix)")
        return 2
    if args.install:
        install()
    for tool in ("dovecot", "doveadm", "tcpdump"):
        if shutil.which(tool) is None:
            log(f"{tool} not found; run with --install")
            return 2
    names = [n for arg in args.only for n in arg.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        log(f"unknown scenario(s): {unknown}; known: {list(SCENARIOS)}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fwdaudit-real-"))
    os.chmod(tmp, 0o755)
    v6, added = setup_v6()
    env = Env(tmp=tmp, out=args.out.resolve(), versions=versions(), v6=v6)
    log(f"versions: {env.versions}; temp dir {tmp}")
    failed: list[str] = []
    t0 = time.monotonic()
    try:
        for name in names:
            log(f"scenario {name} ...")
            try:
                exp = run_scenario(name, env)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                traceback.print_exc()
                log(f"scenario {name} FAILED: {exc}")
                failed.append(name)
                continue
            probs = exp["cross_check_problems"] + exp["tcpdump"]["capture_problems"]
            log(
                f"  {len(exp['connections'])} connections, {len(exp['must_show']['forwarding'])} "
                f"forwarding commands, {exp['pcap_bytes']} bytes, {exp['run_seconds']}s"
                + (f"; CROSS-CHECK PROBLEMS: {probs}" if probs else "")
            )
    finally:
        for a in added:
            run(["ip", "-6", "addr", "del", f"{a}/128", "dev", "lo"], check=False)
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {time.monotonic() - t0:.1f}s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
