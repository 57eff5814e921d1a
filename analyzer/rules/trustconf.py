"""Which senders a server trusts, read from Dovecot/Postfix configuration files and ``--trusted``.

A :class:`TrustConfig` answers one question for the trust rules: would the
server at ``server_ip`` accept forwarding for ``protocol`` from ``sender_ip``?
It knows three kinds of source:

* ``dovecot``: a ``dovecot.conf`` (with its ``!include`` tree) or ``doveconf -n``
  output. ``login_trusted_networks`` is the list the login services and LMTP check
  (spec "Terminology", 4.1); an unset list trusts nobody.
* ``postfix``: a ``main.cf``. ``smtpd_authorized_xclient_hosts`` (default empty)
  is the list Postfix checks before it shows and accepts XCLIENT (spec 3.2, 4.4).
* ``cli``: ``--trusted [SERVER=]CIDR,...``.

Strategy: files are parsed once into flat :class:`TrustSource` rows that carry
the filter they came from, so a lookup is a short loop with no file access.

* Dovecot: the parser walks logical lines (``\\`` continuations, ``#`` comments
  outside quotes) with a section stack, follows ``!include``/``!include_try``
  (relative to the including file, globbed, sorted, depth- and count-bounded),
  expands ``$setting`` references and reads ``key = <file`` values only for the
  settings it needs. Every ``protocol``/``local``/``remote`` block that sets
  ``login_trusted_networks`` becomes its own source with the block's filter; the
  top level gives one source per distinct set of listen addresses (``listen``,
  overridden per service by ``inet_listener { address }``). Dovecot applies the
  most specific matching filter (``config-filter.c: config_filter_parser_cmp()``:
  local address bits, then remote bits, then protocol), so a source records its
  ``specificity`` and :meth:`TrustConfig.decide` picks, per file, the most specific
  source that applies. ``local_name`` (TLS SNI) blocks cannot be evaluated from a
  capture: they are skipped with a warning. A ``protocols`` setting limits the file
  to the forwarding services it enables (unset: imap, pop3, submission, lmtp).
* Postfix: logical lines (continuations start with white space, ``#`` lines are
  comments), ``$name``/``${name}``/``$(name)`` expansion (bounded depth),
  ``!pattern`` exclusions with Postfix's first-match order (turned into an
  ``excluded`` list that is checked first, see :func:`_first_match_to_sets`),
  ``/file`` pattern files and ``static:all``. Host names and other lookup tables
  cannot be evaluated offline: they are kept in ``unresolved`` and reported as
  warnings. ``inet_interfaces`` gives the servers; ``master.cf`` ``-o`` overrides
  are not read (pin the file to the right address with ``FILE@ADDRESS`` instead).
* Everything ignored while loading is one sentence in ``TrustConfig.warnings``.
* Across files, sources are combined generously: a sender is trusted when any file
  whose filter applies trusts it, and distrusted only when every applicable file
  does. The HIGH "untrusted" findings therefore need every given config to agree.
"""

from __future__ import annotations

import argparse
import functools
import glob
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from analyzer.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DOVECOT_PROTOCOLS = frozenset({"imap", "pop3", "submission", "lmtp"})  # services that read forwarded fields (spec 0)
POSTFIX_PROTOCOLS = frozenset({"smtp", "submission"})  # smtpd serves SMTP and the submission service (spec 4.4)
#: Dovecot service whose inet listeners serve each protocol (10-master.conf)
DOVECOT_SERVICES = {"imap-login": "imap", "pop3-login": "pop3", "submission-login": "submission", "lmtp": "lmtp"}

MAX_INCLUDE_DEPTH = 16  # our bound on nested !include (Dovecot has no documented limit)
MAX_CONFIG_FILES = 512  # our bound on files read for one --dovecot-config
MAX_FILE_BYTES = 4 * 1024 * 1024  # our bound on one configuration file
MAX_EXPAND_DEPTH = 16  # our bound on nested Postfix $name expansion
MAX_NETWORKS = 4096  # our bound on networks (and pieces of excluded networks) per source
MAX_SECTION_DEPTH = 32  # our bound on nested { } blocks

_ANY = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True, slots=True)
class TrustSource:
    """One list of trusted networks and where it applies."""

    kind: str  #: "dovecot", "postfix" or "cli"
    origin: str  #: file path (with ``@ADDR`` when pinned) or "--trusted"
    servers: tuple[str, ...]  #: server addresses/networks it applies to (listen addresses); empty = any server
    networks: tuple[Network, ...]  #: trusted sender networks, in configuration order
    protocols: frozenset[str] | None  #: protocols it applies to; None = all
    excluded: tuple[Network, ...] = ()  #: senders never trusted (Postfix ``!pattern``), checked before ``networks``
    remotes: tuple[Network, ...] = ()  #: Dovecot ``remote`` filter: applies only to these senders; empty = any
    specificity: tuple[int, int, int] = (0, 0, 0)  #: (local bits, remote bits, protocol) of the Dovecot filter
    setting: str = ""  #: the setting it was read from, e.g. ``login_trusted_networks`` inside ``protocol pop3``
    unresolved: tuple[str, ...] = ()  #: entries that cannot be evaluated offline (host names, lookup tables)

    def applies(self, sender: ipaddress.IPv4Address | ipaddress.IPv6Address,
                server: ipaddress.IPv4Address | ipaddress.IPv6Address, protocol: str) -> bool:
        """True when this source's filter covers the server, protocol and (remote filter) sender."""
        if self.protocols is not None and protocol not in self.protocols:
            return False
        if self.servers and not any(server in _net(s) for s in self.servers):
            return False
        return not self.remotes or any(sender in n for n in self.remotes)

    def matches(self, sender: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True when the sender is in the trusted networks (and not excluded)."""
        if any(sender in n for n in self.excluded):
            return False
        return any(sender in n for n in self.networks)

    def describe(self) -> str:
        """Short human description: where the list comes from and what it holds."""
        nets = " ".join(str(n) for n in self.networks[:8]) or "(empty: trusts nobody)"
        more = f" (+{len(self.networks) - 8} more)" if len(self.networks) > 8 else ""
        where = f" {self.setting}" if self.setting else ""
        return f"{self.origin}{where}: {nets}{more}"


@dataclass(frozen=True, slots=True)
class TrustDecision:
    """The answer of :meth:`TrustConfig.decide`."""

    trusted: bool  #: the sender is trusted by at least one applicable source
    sources: tuple[TrustSource, ...]  #: the deciding source of each file that applies


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Every trust source given on the command line."""

    sources: tuple[TrustSource, ...]
    warnings: tuple[str, ...] = field(default=())  #: one sentence each: what was ignored while loading, and why

    def decide(self, sender_ip: str, server_ip: str, protocol: str) -> TrustDecision | None:
        """The deciding sources for this server+protocol, or None when no source applies."""
        try:
            sender = ipaddress.ip_address(sender_ip)
            server = ipaddress.ip_address(server_ip)
        except ValueError:
            return None
        best: dict[tuple[str, str], TrustSource] = {}
        for src in self.sources:
            if not src.applies(sender, server, protocol):
                continue
            key = (src.kind, src.origin)
            cur = best.get(key)
            if cur is None or src.specificity > cur.specificity:
                best[key] = src
        if not best:
            return None
        chosen = tuple(best.values())
        return TrustDecision(any(s.matches(sender) for s in chosen), chosen)

    def trusts(self, sender_ip: str, server_ip: str, protocol: str) -> bool | None:
        """True/False when some source applies to this server+protocol, None when none does."""
        d = self.decide(sender_ip, server_ip, protocol)
        return None if d is None else d.trusted


@functools.lru_cache(maxsize=4096)
def _net(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        return ipaddress.ip_address(t)
    except ValueError:
        return None


def _parse_network(text: str) -> Network | None:
    """``1.2.3.4``, ``1.2.3.0/24``, ``::1``, ``[2001:db8::]/32`` (Postfix form) to a network; None if not one."""
    t = text.strip()
    if t.startswith("["):
        close = t.find("]")
        if close < 0:
            return None
        t = t[1:close] + t[close + 1:]
    if "%" in t.split("/", 1)[0]:
        return None  # scoped IPv6 addresses cannot match capture addresses reliably
    try:
        return ipaddress.ip_network(t, strict=False)
    except ValueError:
        return None


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes, not a configuration file")
    if b"\0" in data:
        raise ConfigError(f"{what} {path}: contains NUL bytes, not a configuration file")
    return data.decode("utf-8", "replace")


def split_pinned(spec: str) -> tuple[str, str | None]:
    """``FILE@ADDRESS`` -> (FILE, ADDRESS); a path that merely contains ``@`` stays whole."""
    if "@" in spec:
        path, _, addr = spec.rpartition("@")
        ip = _parse_ip(addr)
        if ip is not None and path:
            return path, str(ip)
        if not os.path.exists(spec):
            raise ConfigError(f"{spec}: {addr!r} after '@' is not an IP address")
    return spec, None


# --------------------------------------------------------------------------------------------
# Dovecot


@dataclass(frozen=True, slots=True)
class _Filter:
    """The filter blocks around a setting."""

    protocols: frozenset[str] | None = None  #: protocol filter (after ``!`` negation), None = any
    local: Network | None = None  #: ``local`` block
    remote: Network | None = None  #: ``remote`` block
    unusable: str | None = None  #: why settings here cannot be applied (``local_name``, host names)
    label: str = ""  #: the blocks as written, for messages (``local 192.0.2.31 protocol imap``)

    @property
    def is_global(self) -> bool:
        return self.protocols is None and self.local is None and self.remote is None and self.unusable is None


@dataclass(slots=True)
class _DovecotState:
    """What the Dovecot parser collects."""

    path: str  #: the top file, for messages
    values: dict[str, tuple[str, str, int]] = field(default_factory=dict)  #: global key -> (value, file, line)
    trusted: list[tuple[_Filter, str, str, int]] = field(default_factory=list)  #: filtered login_trusted_networks
    listeners: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  #: (service, listener) -> settings
    warnings: list[str] = field(default_factory=list)
    files: int = 0


@dataclass(slots=True)
class _Section:
    kind: str  #: section type (``protocol``, ``service``, ``inet_listener`` ...)
    name: str  #: section argument ("" when none)
    filt: _Filter  #: filter in force inside
    boollist: str | None = None  #: 2.4 boollist block of a setting we read (``login_trusted_networks { NET = yes }``)
    items: list[str] = field(default_factory=list)


_WANTED = ("login_trusted_networks", "listen", "protocols")
_DOLLAR_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def _strip_comment(line: str) -> str:
    """Cut a ``#`` comment outside quotes (config-parser.c: config_parse_line())."""
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in "\"'":
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if c == "#":
            return line[:i]
        i += 1
    return line


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def _filter_for(kind: str, arg: str, outer: _Filter, where: str) -> _Filter:
    if kind in ("protocol", "local", "remote", "local_name"):
        outer = replace(outer, label=f"{outer.label} {kind} {arg}".strip())
    if kind == "protocol":
        names = arg.split()
        pos = frozenset(n for n in names if not n.startswith("!"))
        neg = frozenset(n[1:] for n in names if n.startswith("!"))
        prot: frozenset[str] = pos if pos else frozenset(DOVECOT_PROTOCOLS - neg)
        if outer.protocols is not None:
            prot = prot & outer.protocols
        return replace(outer, protocols=prot)
    if kind in ("local", "remote"):
        net = _parse_network(arg.strip("\"'"))
        if net is None:
            return replace(outer, unusable=f"{kind} {arg!r} is not an address or network (host names are resolved "
                                            f"by Dovecot at start-up, which cannot be repeated offline) at {where}")
        return replace(outer, local=net) if kind == "local" else replace(outer, remote=net)
    if kind == "local_name":
        return replace(outer, unusable=f"local_name {arg} block (TLS SNI name) at {where} cannot be told from a capture")
    return outer


def _parse_dovecot_file(path: str, st: _DovecotState, stack: list[_Section], depth: int) -> None:
    st.files += 1
    if st.files > MAX_CONFIG_FILES:
        raise ConfigError(f"Dovecot config {st.path}: more than {MAX_CONFIG_FILES} files included")
    text = _read_text(path, "Dovecot config")
    base_dir = os.path.dirname(path) or "."
    start_depth = len(stack)
    pending = ""
    pending_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        line = _strip_comment(line).rstrip()
        if line.endswith("\\"):
            if not pending:
                pending_line = lineno
            pending += line[:-1] + " "
            continue
        if pending:
            line, lineno_used = pending + line.lstrip(), pending_line
            pending = ""
        else:
            lineno_used = lineno
        if line:
            _dovecot_line(line, path, lineno_used, base_dir, st, stack, depth)
    if len(stack) != start_depth:
        raise ConfigError(f"Dovecot config {path}: missing '}}' (a block opened in this file is not closed)")


def _dovecot_line(line: str, path: str, lineno: int, base_dir: str, st: _DovecotState,
                  stack: list[_Section], depth: int) -> None:
    where = f"{path}:{lineno}"
    filt = stack[-1].filt if stack else _Filter()
    if line.startswith("!"):
        word, _, rest = line.partition(" ")
        if word not in ("!include", "!include_try"):
            raise ConfigError(f"Dovecot config {where}: unknown directive {word!r}")
        _dovecot_include(_unquote(rest.strip()), word == "!include_try", where, base_dir, st, stack, depth)
        return
    if line == "}":
        if not stack:
            raise ConfigError(f"Dovecot config {where}: '}}' without an open block")
        sec = stack.pop()
        if sec.boollist is not None:
            _set_value(sec.boollist, " ".join(sec.items), sec.filt, path, lineno, st, stack)
        return
    m = re.match(r"([^\s=]+)\s*=\s*(.*)$", line)
    if m is not None:
        key, value = m.group(1), m.group(2).strip()
        if stack and stack[-1].boollist is not None:
            if value.lower() in ("yes", "y", "1", "true"):
                stack[-1].items.append(_unquote(key))
            return
        if value.startswith("<"):
            if key in _WANTED or (stack and stack[-1].kind in ("inet_listener",) and key in ("address", "listen")):
                fpath = value[1:].strip()
                if not os.path.isabs(fpath):
                    fpath = os.path.join(base_dir, fpath)
                value = _read_text(fpath, f"Dovecot config {where}: {key} =").strip()
            else:
                return  # e.g. ssl_key = </etc/...: not needed, not read
        _set_value(key, _unquote(value), filt, path, lineno, st, stack)
        return
    m = re.match(r"(\S+)(?:\s+(\"[^\"]*\"|'[^']*'|.+?))?\s*\{$", line)
    if m is None:
        raise ConfigError(f"Dovecot config {where}: cannot parse {line[:60]!r} (expected 'key = value', "
                          f"'section [name] {{', '}}' or '!include')")
    if len(stack) >= MAX_SECTION_DEPTH:
        raise ConfigError(f"Dovecot config {where}: blocks nested deeper than {MAX_SECTION_DEPTH}")
    kind, arg = m.group(1), _unquote((m.group(2) or "").strip())
    inner = _filter_for(kind, arg, filt, where)
    boollist = kind if kind in _WANTED and not arg else None
    stack.append(_Section(kind, arg, inner, boollist))


def _dovecot_include(pattern: str, optional: bool, where: str, base_dir: str, st: _DovecotState,
                     stack: list[_Section], depth: int) -> None:
    if depth >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"Dovecot config {where}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
    full = pattern if os.path.isabs(pattern) else os.path.join(base_dir, pattern)
    matches = sorted(glob.glob(full)) if glob.has_magic(full) else ([full] if os.path.exists(full) else [])
    matches = [p for p in matches if os.path.isfile(p)]
    if not matches:
        if optional:
            return
        raise ConfigError(f"Dovecot config {where}: !include {pattern}: no such file")
    for p in matches:  # !include_try only tolerates a missing file; an existing one must parse
        _parse_dovecot_file(p, st, stack, depth + 1)


def _expand_dollar(value: str, st: _DovecotState) -> str:
    """``$setting`` references to earlier global values (``protocols = $protocols imap``)."""
    return _DOLLAR_RE.sub(lambda m: st.values[m.group(1)][0] if m.group(1) in st.values else m.group(0), value)


def _set_value(key: str, value: str, filt: _Filter, path: str, lineno: int, st: _DovecotState,
               stack: list[_Section]) -> None:
    value = _expand_dollar(value, st)
    if stack and stack[-1].kind == "inet_listener" and len(stack) >= 2 and stack[-2].kind == "service":
        if key in ("address", "listen", "port"):
            st.listeners.setdefault((stack[-2].name, stack[-1].name), {})[key] = value
        return
    if key not in _WANTED:
        return
    inside_other = any(s.kind not in ("protocol", "local", "remote", "local_name") and s.boollist is None
                       for s in stack)
    if inside_other:
        return  # e.g. a same-named key inside plugin { } or a passdb block: not the setting
    if filt.is_global:
        st.values[key] = (value, path, lineno)
    elif key == "login_trusted_networks":
        st.trusted.append((filt, value, path, lineno))


def _dovecot_networks(value: str, where: str) -> tuple[Network, ...]:
    nets: list[Network] = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        net = _parse_network(item)
        if net is None:
            raise ConfigError(f"Dovecot config {where}: login_trusted_networks: {item!r} is not an IP address or "
                              "network")
        nets.append(net)
        if len(nets) > MAX_NETWORKS:
            raise ConfigError(f"Dovecot config {where}: login_trusted_networks has more than {MAX_NETWORKS} entries")
    return tuple(nets)


def _listen_servers(value: str, where: str, warnings: list[str]) -> tuple[str, ...] | None:
    """Listen addresses as network strings; () for any; None when nothing usable is listed."""
    out: list[str] = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        if item == "*":
            out.append("0.0.0.0/0")
        elif item == "::" or item == "[::]":
            out.append("::/0")
        else:
            ip = _parse_ip(item)
            if ip is None:
                warnings.append(f"{where}: listen address {item!r} is a host name; it cannot be resolved offline "
                                "and is ignored")
                continue
            out.append(str(ip))
    if not out:
        return None
    if "0.0.0.0/0" in out and "::/0" in out:
        return ()
    return tuple(dict.fromkeys(out))


def _load_dovecot(spec: str, warnings: list[str]) -> list[TrustSource]:
    path, pin = split_pinned(spec)
    origin = spec
    st = _DovecotState(path)
    _parse_dovecot_file(path, st, [], 0)
    warnings.extend(st.warnings)
    prot_value = st.values.get("protocols")
    if prot_value is not None:
        enabled = frozenset(p for p in re.split(r"[\s,]+", prot_value[0]) if p) & DOVECOT_PROTOCOLS
        if not enabled:
            warnings.append(f"{path}: 'protocols' enables none of imap, pop3, submission, lmtp; the file applies "
                            "to no forwarding service")
    else:
        enabled = DOVECOT_PROTOCOLS
    listen_value = st.values.get("listen")
    default_servers: tuple[str, ...] | None = ()
    if listen_value is not None:
        default_servers = _listen_servers(listen_value[0], f"{listen_value[1]}:{listen_value[2]}", warnings)
    # servers per protocol: inet_listener addresses override listen
    per_proto: dict[str, tuple[str, ...] | None] = {}
    for proto in sorted(enabled):
        active = [(service, lset) for (service, _l), lset in sorted(st.listeners.items())
                  if DOVECOT_SERVICES.get(service) == proto and lset.get("port", "").strip() != "0"]
        if not active:  # no listener declared (or only disabled ones): the defaults listen on `listen`
            per_proto[proto] = default_servers
            continue
        addrs: list[str] = []
        for service, lset in active:
            addr = (lset.get("address") or lset.get("listen") or "").strip()
            got = default_servers if not addr else _listen_servers(addr, f"{path} service {service}", warnings)
            if got is not None:
                addrs.extend(got or _ANY)
        uniq = tuple(dict.fromkeys(addrs))
        per_proto[proto] = None if not uniq else (() if ("0.0.0.0/0" in uniq and "::/0" in uniq) else uniq)
    tn = st.values.get("login_trusted_networks")
    global_nets = _dovecot_networks(tn[0], f"{tn[1]}:{tn[2]}") if tn is not None else ()
    sources: list[TrustSource] = []
    groups: dict[tuple[str, ...], set[str]] = {}
    for proto, servers in per_proto.items():
        if servers is None:
            warnings.append(f"{path}: no usable listen address for {proto}; the file is not applied to it")
            continue
        if pin is not None:
            servers = (pin,)
        groups.setdefault(servers, set()).add(proto)
    for servers, protos in sorted(groups.items(), key=lambda kv: sorted(kv[1])):
        sources.append(TrustSource("dovecot", origin, servers, global_nets, frozenset(protos),
                                   setting="login_trusted_networks" + ("" if tn else " (not set: trusts nobody)")))
    for filt, value, fpath, lineno in st.trusted:
        where = f"{fpath}:{lineno}"
        if filt.unusable is not None:
            warnings.append(f"{filt.unusable}: its login_trusted_networks is ignored")
            continue
        fprotos = (filt.protocols if filt.protocols is not None else DOVECOT_PROTOCOLS) & enabled
        spec_t = (filt.local.prefixlen if filt.local is not None else 0,
                  filt.remote.prefixlen if filt.remote is not None else 0,
                  1 if filt.protocols is not None else 0)
        remotes = (filt.remote,) if filt.remote is not None else ()
        setting = f"login_trusted_networks inside {filt.label} ({where})"
        nets = _dovecot_networks(value, where)
        if filt.local is None:  # the filter applies wherever the protocols listen
            for servers, gprotos in sorted(groups.items(), key=lambda kv: sorted(kv[1])):
                if fprotos & gprotos:
                    sources.append(TrustSource("dovecot", origin, servers, nets, frozenset(fprotos & gprotos),
                                               remotes=remotes, specificity=spec_t, setting=setting))
            continue
        local = filt.local
        if pin is not None and ipaddress.ip_address(pin) not in local:
            continue
        # only the protocols that listen on the local address
        fprotos = frozenset(p for p in fprotos if per_proto.get(p) is not None and (
            not per_proto[p] or any(_net(s).overlaps(local) for s in per_proto[p] or ())))
        if not fprotos:
            warnings.append(f"{where}: no enabled protocol listens on local {local}; the block is ignored")
            continue
        where_local = str(local.network_address) if local.num_addresses == 1 else str(local)
        sources.append(TrustSource("dovecot", origin, (pin,) if pin is not None else (where_local,), nets, fprotos,
                                   remotes=remotes, specificity=spec_t, setting=setting))
    return sources


# --------------------------------------------------------------------------------------------
# Postfix

_PF_REF_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?:([?:])([^}]*))?\}|\(([A-Za-z0-9_]+)\)|([A-Za-z0-9_]+))")


def _postfix_params(path: str) -> dict[str, str]:
    text = _read_text(path, "Postfix config")
    params: dict[str, str] = {}
    cur: list[str] | None = None
    cur_line = 0
    logical: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[:1].isspace():
            if cur is None:
                raise ConfigError(f"Postfix config {path}:{lineno}: a continuation line with nothing to continue")
            cur.append(stripped)
            continue
        if cur is not None:
            logical.append((cur_line, " ".join(cur)))
        cur, cur_line = [stripped], lineno
    if cur is not None:
        logical.append((cur_line, " ".join(cur)))
    for lineno, line in logical:
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"Postfix config {path}:{lineno}: not a 'name = value' line: {line[:60]!r}")
        params[name] = value.strip()
    return params


def _postfix_expand(value: str, params: dict[str, str], where: str, warnings: list[str], depth: int = 0) -> str:
    if depth > MAX_EXPAND_DEPTH:
        raise ConfigError(f"Postfix config {where}: $name expansion nested deeper than {MAX_EXPAND_DEPTH} (a loop?)")

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4) or m.group(5)
        if name not in params:
            warnings.append(f"{where}: ${name} is not set in this file; its built-in default cannot be known "
                            "offline and it is taken as empty")
            inner = ""
        else:
            inner = _postfix_expand(params[name], params, where, warnings, depth + 1)
        if m.group(2) == "?":
            return _postfix_expand(m.group(3), params, where, warnings, depth + 1) if inner else ""
        if m.group(2) == ":":
            return "" if inner else _postfix_expand(m.group(3), params, where, warnings, depth + 1)
        return inner

    return _PF_REF_RE.sub(sub, value)


def _first_match_to_sets(rules: list[tuple[bool, Network]]) -> tuple[tuple[Network, ...], tuple[Network, ...]]:
    """Postfix first-match list -> (allowed, excluded) with excluded checked first.

    An exclusion only takes effect for addresses that no earlier positive entry
    matched, so each ``!net`` is reduced by the positive entries before it.
    """
    allowed: list[Network] = []
    excluded: list[Network] = []
    for allow, net in rules:
        if allow:
            allowed.append(net)
            continue
        pieces: list[Network] = [net]
        for p in allowed:
            nxt: list[Network] = []
            for piece in pieces:
                if piece.version != p.version or not piece.overlaps(p):
                    nxt.append(piece)
                elif piece.subnet_of(p):  # type: ignore[arg-type]
                    continue
                else:
                    nxt.extend(piece.address_exclude(p))  # type: ignore[arg-type]
            pieces = nxt
            if len(pieces) > MAX_NETWORKS:
                raise ConfigError(f"smtpd_authorized_xclient_hosts: exclusions split into more than {MAX_NETWORKS} "
                                  "networks")
        excluded.extend(pieces)
    return tuple(allowed), tuple(excluded)


def _postfix_patterns(value: str, base_dir: str, where: str, warnings: list[str], unresolved: list[str],
                      depth: int = 0) -> list[tuple[bool, Network]]:
    rules: list[tuple[bool, Network]] = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        allow = True
        while item.startswith("!"):
            allow, item = not allow, item[1:]
        if item.startswith("/"):
            if depth >= MAX_INCLUDE_DEPTH:
                raise ConfigError(f"Postfix config {where}: pattern files nested deeper than {MAX_INCLUDE_DEPTH}")
            try:
                if not os.path.isfile(item):  # also keeps a FIFO or device from blocking the read
                    raise ConfigError(f"Postfix pattern file {item}: not a regular file")
                text = _read_text(item, "Postfix pattern file")
            except ConfigError:
                warnings.append(f"{where}: pattern file {item} cannot be read here; its entries are ignored")
                unresolved.append(item)
                continue
            body = " ".join(ln.split("#", 1)[0] for ln in text.splitlines())
            sub = _postfix_patterns(body, base_dir, where, warnings, unresolved, depth + 1)
            rules.extend((a == allow, n) for a, n in sub)
            continue
        if re.match(r"^[a-z0-9_-]+:", item) and _parse_network(item) is None:
            if item.startswith("static:"):
                rules.extend((allow, _net(a)) for a in _ANY)  # static:<anything> answers every lookup
                continue
            warnings.append(f"{where}: lookup table {item} cannot be consulted offline; it is ignored")
            unresolved.append(item)
            continue
        net = _parse_network(item)
        if net is None:
            warnings.append(f"{where}: {item!r} is a host or domain name; it cannot be resolved offline and is ignored")
            unresolved.append(item)
            continue
        rules.append((allow, net))
        if len(rules) > MAX_NETWORKS:
            raise ConfigError(f"Postfix config {where}: more than {MAX_NETWORKS} networks")
    return rules


def _load_postfix(spec: str, warnings: list[str]) -> list[TrustSource]:
    path, pin = split_pinned(spec)
    params = _postfix_params(path)
    unresolved: list[str] = []
    where = path
    raw = params.get("smtpd_authorized_xclient_hosts", "")
    value = _postfix_expand(raw, params, f"{where} smtpd_authorized_xclient_hosts", warnings)
    rules = _postfix_patterns(value, os.path.dirname(path) or ".", f"{where} smtpd_authorized_xclient_hosts",
                              warnings, unresolved)
    allowed, excluded = _first_match_to_sets(rules)
    servers: tuple[str, ...] | None
    if pin is not None:
        servers = (pin,)
    else:
        iface = _postfix_expand(params.get("inet_interfaces", "all"), params, f"{where} inet_interfaces", warnings)
        items = [x for x in re.split(r"[\s,]+", iface.strip()) if x]
        if not items or any(x.lower() == "all" for x in items):
            servers = ()
        else:
            out: list[str] = []
            for x in items:
                if x.lower() in ("loopback-only", "localhost"):
                    out.extend(("127.0.0.1", "::1"))
                    continue
                ip = _parse_ip(x)
                if ip is None:
                    warnings.append(f"{where} inet_interfaces: {x!r} is a host name; it cannot be resolved offline "
                                    "and is ignored")
                    continue
                out.append(str(ip))
            servers = tuple(dict.fromkeys(out)) if out else None
    if servers is None:
        warnings.append(f"{where}: no usable inet_interfaces address; the file is not applied")
        return []
    setting = "smtpd_authorized_xclient_hosts" + ("" if raw.strip() else " (not set: trusts nobody)")
    return [TrustSource("postfix", spec, servers, allowed, POSTFIX_PROTOCOLS, excluded=excluded, setting=setting,
                        unresolved=tuple(unresolved))]


# --------------------------------------------------------------------------------------------
# --trusted


def _load_cli(spec: str) -> TrustSource:
    text = spec.strip()
    servers: tuple[str, ...] = ()
    if "=" in text:
        server, _, text = text.partition("=")
        snet = _parse_network(server)
        if snet is None:
            raise ConfigError(f"--trusted {spec}: server {server!r} is not an IP address or network")
        servers = (str(snet.network_address) if snet.num_addresses == 1 else str(snet),)
    nets: list[Network] = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        net = _parse_network(item)
        if net is None:
            raise ConfigError(f"--trusted {spec}: {item!r} is not an IP address or network")
        nets.append(net)
    if not nets:
        raise ConfigError(f"--trusted {spec}: no network given (expected [SERVER=]CIDR,...)")
    return TrustSource("cli", "--trusted", servers, tuple(nets), None, setting=spec)


def load_trust(dovecot: Iterable[str], postfix: Iterable[str], trusted: Iterable[str]) -> TrustConfig:
    """Parse every given source; raise ConfigError (one clear sentence) on unreadable or unparseable input."""
    sources: list[TrustSource] = []
    warnings: list[str] = []
    for spec in dovecot:
        sources.extend(_load_dovecot(spec, warnings))
    for spec in postfix:
        sources.extend(_load_postfix(spec, warnings))
    for i, spec in enumerate(trusted):
        src = _load_cli(spec)
        sources.append(replace(src, origin=f"--trusted #{i + 1}"))
    return TrustConfig(tuple(sources), tuple(dict.fromkeys(warnings)))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --dovecot-config, --postfix-config and --trusted to an argparse parser."""
    g = parser.add_argument_group("trust configuration (who may send forwarding commands)")
    g.add_argument("--dovecot-config", action="append", default=[], metavar="FILE[@ADDR]",
                   help="dovecot.conf or 'doveconf -n' output of a backend (login_trusted_networks); @ADDR pins it "
                        "to that server address (repeatable)")
    g.add_argument("--postfix-config", action="append", default=[], metavar="FILE[@ADDR]",
                   help="Postfix main.cf of a backend (smtpd_authorized_xclient_hosts); @ADDR pins it to that server "
                        "address (repeatable)")
    g.add_argument("--trusted", action="append", default=[], metavar="[SERVER=]CIDR,...",
                   help="networks trusted to send forwarding commands (to SERVER only, if given) (repeatable)")


def trust_from_args(args: argparse.Namespace) -> TrustConfig | None:
    """The TrustConfig the options describe; None when no trust option was given."""
    dovecot = list(getattr(args, "dovecot_config", None) or [])
    postfix = list(getattr(args, "postfix_config", None) or [])
    trusted = list(getattr(args, "trusted", None) or [])
    if not (dovecot or postfix or trusted):
        return None
    return load_trust(dovecot, postfix, trusted)
