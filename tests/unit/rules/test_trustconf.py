"""Trust configuration: Dovecot (Debian tree, doveconf -n, includes, filters), Postfix main.cf, --trusted."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from analyzer.errors import ConfigError
from analyzer.rules.trustconf import (
    TrustConfig,
    add_cli_arguments,
    load_trust,
    split_pinned,
    trust_from_args,
)

CONF = Path(__file__).parent / "conf"
DEBIAN = str(CONF / "debian-dovecot" / "dovecot.conf")
DOVECONF_N = str(CONF / "doveconf-n.txt")


def dovecot(path: str) -> TrustConfig:
    return load_trust([path], [], [])


def postfix(path: str) -> TrustConfig:
    return load_trust([], [path], [])


def write(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


# --- Dovecot: the Debian conf.d tree with a local.conf, and the same settings as `doveconf -n` prints them


@pytest.mark.parametrize("path", [DEBIAN, DOVECONF_N], ids=["debian-tree", "doveconf-n"])
@pytest.mark.parametrize(("sender", "server", "protocol", "expected"), [
    ("192.0.2.20", "192.0.2.30", "imap", True),  # global login_trusted_networks (space separated)
    ("10.1.200.3", "192.0.2.30", "submission", True),  # comma separated CIDR
    ("2001:db8:20::5", "2001:db8::30", "imap", True),  # IPv6 network, IPv6 listen address (after a \\ continuation)
    ("203.0.113.9", "192.0.2.30", "imap", False),
    ("192.0.2.20", "192.0.2.30", "pop3", False),  # protocol pop3 { } replaces the global list for pop3
    ("192.0.2.21", "192.0.2.30", "pop3", True),
    ("198.51.100.5", "192.0.2.31", "imap", False),  # local + protocol is more specific than local
    ("203.0.113.7", "192.0.2.31", "imap", True),
    ("198.51.100.5", "192.0.2.31", "pop3", True),  # local beats protocol pop3
    ("192.0.2.21", "192.0.2.31", "pop3", False),
    ("10.9.1.1", "192.0.2.30", "pop3", True),  # remote 10.9.0.0/16 { } beats protocol pop3 { }
    ("192.0.2.20", "192.0.2.33", "lmtp", True),  # lmtp listens only on its inet_listener address
    ("192.0.2.20", "192.0.2.30", "lmtp", None),
    ("192.0.2.20", "192.0.2.99", "imap", None),  # not a listen address
    ("192.0.2.20", "192.0.2.30", "smtp", None),  # Dovecot does not serve Postfix's SMTP
])
def test_debian_dovecot(path: str, sender: str, server: str, protocol: str, expected: bool | None) -> None:
    assert dovecot(path).trusts(sender, server, protocol) is expected


@pytest.mark.parametrize("path", [DEBIAN, DOVECONF_N], ids=["debian-tree", "doveconf-n"])
def test_debian_dovecot_warns_about_local_name(path: str) -> None:
    cfg = dovecot(path)
    assert any("local_name mail.example.org" in w for w in cfg.warnings)
    assert cfg.trusts("8.8.8.8", "192.0.2.30", "imap") is False  # the local_name block's 0.0.0.0/0 is not applied


def test_debian_dovecot_decision_names_the_deciding_block() -> None:
    d = dovecot(DEBIAN).decide("203.0.113.7", "192.0.2.31", "imap")
    assert d is not None and d.trusted
    assert [s.specificity for s in d.sources] == [(32, 0, 1)]
    assert "local 192.0.2.31 protocol imap" in d.sources[0].describe()


def test_unset_list_trusts_nobody() -> None:
    cfg = dovecot(str(CONF / "debian-dovecot" / "conf.d" / "10-master.conf"))
    assert cfg.trusts("127.0.0.1", "192.0.2.30", "imap") is False
    assert "not set" in cfg.sources[0].setting


def test_includes_globs_dollar_expansion_and_value_files() -> None:
    cfg = dovecot(str(CONF / "includes" / "main.conf"))
    # login_trusted_networks = <trusted-networks.txt; imap listens on its inet_listener address only
    assert cfg.trusts("10.20.1.1", "10.0.0.6", "imap") is True
    assert cfg.trusts("10.30.0.1", "10.0.0.6", "imap") is True
    assert cfg.trusts("10.20.1.1", "10.0.0.5", "imap") is None
    # protocols = $protocols pop3 ; protocol !imap { } (from a nested include) covers pop3 on `listen`
    assert cfg.trusts("10.40.0.9", "10.0.0.5", "pop3") is True
    assert cfg.trusts("10.20.1.1", "10.0.0.5", "pop3") is False
    assert cfg.trusts("10.20.1.1", "10.0.0.5", "submission") is None  # not in `protocols`


def test_pinned_file_and_missing_include_try() -> None:
    cfg = dovecot(str(CONF / "dovecot-pinned.conf") + "@127.0.0.5")
    assert cfg.trusts("127.0.0.1", "127.0.0.5", "imap") is True
    assert cfg.trusts("::1", "127.0.0.5", "lmtp") is True
    assert cfg.trusts("192.0.2.1", "127.0.0.5", "pop3") is False
    assert cfg.trusts("127.0.0.1", "127.0.0.6", "imap") is None  # listen = *, :: but pinned to one address
    assert dovecot(str(CONF / "dovecot-pinned.conf")).trusts("127.0.0.1", "127.0.0.6", "imap") is True


def test_boollist_block_and_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "d.conf", 'login_trusted_networks {\n  10.0.0.0/8 = yes\n  "::1" = yes\n'
                                     '  10.5.0.0/16 = no\n}\nlisten = "192.0.2.1"  # quoted\n')
    cfg = dovecot(path)
    assert cfg.trusts("10.1.1.1", "192.0.2.1", "imap") is True
    assert cfg.trusts("::1", "192.0.2.1", "imap") is True
    assert cfg.trusts("10.1.1.1", "192.0.2.2", "imap") is None


def test_keyword_inside_other_sections_is_not_the_setting(tmp_path: Path) -> None:
    path = write(tmp_path, "d.conf", "plugin {\n  login_trusted_networks = 0.0.0.0/0\n}\n"
                                     "login_trusted_networks = 10.0.0.1\n")
    assert dovecot(path).trusts("192.0.2.9", "192.0.2.1", "imap") is False


@pytest.mark.parametrize(("text", "fragment"), [
    ("login_trusted_networks = 10.0.0.0/8 not-a-net\n", "not-a-net"),
    ("protocol imap {\n login_trusted_networks = 10.0.0.1\n", "missing '}'"),
    ("}\n", "without an open block"),
    ("this line means nothing\n", "cannot parse"),
    ("!include nowhere/*.conf\n", "no such file"),
    ("!frobnicate x\n", "unknown directive"),
    ("login_trusted_networks = <no-such-file.txt\n", "cannot be read"),
])
def test_dovecot_errors_are_one_clear_sentence(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "bad.conf", text)
    with pytest.raises(ConfigError) as exc:
        dovecot(path)
    msg = str(exc.value)
    assert fragment in msg and path in msg and "\n" not in msg


def test_dovecot_include_loop_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "loop.conf", "!include loop.conf\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        dovecot(path)


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        dovecot(str(tmp_path / "absent.conf"))
    p = tmp_path / "bin.conf"
    p.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match="NUL"):
        postfix(str(p))


# --- Postfix main.cf


@pytest.mark.parametrize(("sender", "server", "protocol", "expected"), [
    ("192.0.2.20", "192.0.2.40", "smtp", True),  # ${mynetworks} on a continuation line
    ("127.0.0.1", "127.0.0.1", "submission", True),
    ("2001:db8:20::1", "192.0.2.40", "smtp", True),  # $(proxy_hosts)
    ("192.0.2.66", "192.0.2.40", "smtp", False),  # !192.0.2.66 comes first
    ("203.0.113.1", "192.0.2.40", "smtp", False),
    ("192.0.2.20", "192.0.2.99", "smtp", None),  # not an inet_interfaces address
    ("192.0.2.20", "192.0.2.40", "imap", None),  # Postfix does not serve IMAP
])
def test_postfix_main_cf(sender: str, server: str, protocol: str, expected: bool | None) -> None:
    assert postfix(str(CONF / "postfix-main.cf")).trusts(sender, server, protocol) is expected


def test_postfix_unresolvable_entries_are_warnings() -> None:
    cfg = postfix(str(CONF / "postfix-main.cf"))
    assert cfg.sources[0].unresolved == ("proxy.example.net", "cidr:/etc/postfix/xclient.cidr")
    assert any("proxy.example.net" in w and "resolved offline" in w for w in cfg.warnings)
    assert any("cidr:/etc/postfix/xclient.cidr" in w for w in cfg.warnings)


def test_postfix_static_all_and_loopback_only() -> None:
    cfg = postfix(str(CONF / "postfix-static.cf"))
    assert cfg.trusts("203.0.113.1", "127.0.0.1", "smtp") is True
    assert cfg.trusts("2001:db8::1", "::1", "smtp") is True
    assert cfg.trusts("203.0.113.1", "192.0.2.40", "smtp") is None


def test_postfix_debian_default_trusts_nobody_anywhere() -> None:
    cfg = postfix(str(CONF / "postfix-default.cf"))
    assert cfg.trusts("127.0.0.1", "192.0.2.40", "smtp") is False
    assert cfg.trusts("127.0.0.1", "10.9.9.9", "submission") is False


@pytest.mark.parametrize(("value", "checks"), [
    ("192.0.2.0/24, !192.0.2.66", {"192.0.2.66": True, "192.0.2.7": True}),  # first match wins
    ("!192.0.2.66 192.0.2.0/24", {"192.0.2.66": False, "192.0.2.7": True}),
    ("10.0.0.1, !10.0.0.0/8, 10.0.0.0/8", {"10.0.0.1": True, "10.0.0.2": False, "11.0.0.1": False}),
    ("!10.0.0.0/30 10.0.0.0/24 !10.0.1.0/24 10.0.0.0/8",
     {"10.0.0.2": False, "10.0.0.9": True, "10.0.1.9": False, "10.3.0.1": True}),
    ("[2001:db8::]/32 [::1]", {"2001:db8::5": True, "::1": True, "::2": False}),
])
def test_postfix_first_match_order(tmp_path: Path, value: str, checks: dict[str, bool]) -> None:
    cfg = postfix(write(tmp_path, "main.cf", f"smtpd_authorized_xclient_hosts = {value}\n"))
    for sender, want in checks.items():
        assert cfg.trusts(sender, "192.0.2.40", "smtp") is want, sender


def test_postfix_pattern_file_and_conditional_expansion(tmp_path: Path) -> None:
    hosts = write(tmp_path, "xclient_hosts", "# proxies\n10.8.0.0/16\n!10.8.0.1 # not this one\n")
    path = write(tmp_path, "main.cf",
                 f"use_file = yes\nsmtpd_authorized_xclient_hosts = !10.8.0.1 ${{use_file?{hosts}}} "
                 "${unset_name:10.7.0.1}\n")
    cfg = postfix(path)
    assert cfg.trusts("10.8.3.3", "192.0.2.40", "smtp") is True
    assert cfg.trusts("10.8.0.1", "192.0.2.40", "smtp") is False
    assert cfg.trusts("10.7.0.1", "192.0.2.40", "smtp") is True
    assert any("$unset_name" in w for w in cfg.warnings)


def test_postfix_missing_mynetworks_and_pattern_file_warn(tmp_path: Path) -> None:
    cfg = postfix(write(tmp_path, "main.cf", "smtpd_authorized_xclient_hosts = $mynetworks, /no/such/file\n"))
    assert cfg.trusts("127.0.0.1", "192.0.2.40", "smtp") is False
    assert any("$mynetworks" in w for w in cfg.warnings)
    assert any("/no/such/file" in w for w in cfg.warnings)


@pytest.mark.parametrize(("text", "fragment"), [
    ("   continued = nothing\n", "continuation"),
    ("no equals sign here\n", "not a 'name = value'"),
    ("a = $b\nb = $a\nsmtpd_authorized_xclient_hosts = $a\n", "nested deeper"),
])
def test_postfix_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        postfix(write(tmp_path, "main.cf", text))


# --- --trusted and the command line


def test_cli_trusted() -> None:
    cfg = load_trust([], [], ["192.0.2.30=10.0.0.0/8,10.1.1.1", "2001:db8::/32"])
    assert cfg.trusts("10.2.2.2", "192.0.2.30", "pop3") is True
    assert cfg.trusts("10.2.2.2", "192.0.2.31", "pop3") is False  # only the second (any server) applies there
    assert load_trust([], [], ["192.0.2.30=10.0.0.0/8"]).trusts("10.2.2.2", "192.0.2.31", "pop3") is None
    assert cfg.trusts("2001:db8::9", "192.0.2.31", "imap") is True
    assert cfg.trusts("10.2.2.2", "2001:db8::1", "imap") is False
    assert [s.origin for s in cfg.sources] == ["--trusted #1", "--trusted #2"]


def test_sources_across_files_combine_generously() -> None:
    cfg = load_trust([DEBIAN], [], ["192.0.2.30=203.0.113.0/24"])
    assert cfg.trusts("203.0.113.9", "192.0.2.30", "imap") is True  # one applicable source trusts it
    d = cfg.decide("198.51.100.1", "192.0.2.30", "imap")
    assert d is not None and not d.trusted and len(d.sources) == 2


@pytest.mark.parametrize("spec", ["bogus", "x=10.0.0.0/8", "192.0.2.1=", "10.0.0.0/33"])
def test_cli_trusted_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="--trusted"):
        load_trust([], [], [spec])


def test_split_pinned() -> None:
    assert split_pinned("/etc/dovecot/dovecot.conf@192.0.2.1") == ("/etc/dovecot/dovecot.conf", "192.0.2.1")
    assert split_pinned("main.cf@[2001:db8::1]") == ("main.cf", "2001:db8::1")
    assert split_pinned("plain.conf") == ("plain.conf", None)
    with pytest.raises(ConfigError, match="not an IP address"):
        split_pinned("/nonexistent/dir@host/main.cf")


def test_cli_arguments_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert trust_from_args(parser.parse_args([])) is None
    args = parser.parse_args([
        "--dovecot-config", DEBIAN + "@192.0.2.30", "--postfix-config", str(CONF / "postfix-static.cf"),
        "--trusted", "10.0.0.0/8", "--trusted", "192.0.2.40=172.16.0.0/12",
    ])
    cfg = trust_from_args(args)
    assert cfg is not None
    assert {s.kind for s in cfg.sources} == {"dovecot", "postfix", "cli"}
    assert cfg.trusts("192.0.2.20", "192.0.2.30", "imap") is True
    assert cfg.trusts("172.16.1.1", "192.0.2.40", "smtp") is True


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), kind=st.sampled_from(["dovecot", "postfix", "cli"]))
def test_random_input_gives_config_or_config_error(data: bytes, kind: str) -> None:
    """Whatever a file or option holds, loading ends in a TrustConfig or one ConfigError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "in.conf")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            if kind == "dovecot":
                cfg = load_trust([path], [], [])
            elif kind == "postfix":
                cfg = load_trust([], [path], [])
            else:
                cfg = load_trust([], [], [data.decode("utf-8", "replace")])
        except ConfigError as exc:
            assert str(exc)
            return
    assert isinstance(cfg, TrustConfig)
    cfg.trusts("10.0.0.1", "10.0.0.2", "imap")
