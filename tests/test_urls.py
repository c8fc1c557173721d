"""Blob URL -> (account, container, blob): the matching rule a wrong key would turn into data loss."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gc_daemon.domain import BlobKey, ContainerKey
from gc_daemon.urls import (
    UrlError,
    blob_url,
    blob_url_parser,
    default_blob_endpoint,
    parse_blob_url,
    parse_blob_url_general,
    parse_container_url,
    quote_blob_name,
)

# --- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("https://acct1.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.blob.core.usgovcloudapi.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.blob.core.chinacloudapi.cn/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.blob.local.azurestack.external/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.z12.blob.storage.azure.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("http://127.0.0.1:10000/acct1/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("http://127.0.0.1/acct1/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("http://[::1]:10000/acct1/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("http://localhost:10000/acct1/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.blob.core.windows.net:443/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.privatelink.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1-secondary.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1-microsoftrouting.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1-internetrouting.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1-microsoftrouting-secondary.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
    ],
    ids=["public", "usgov", "china", "azurestack", "dns-zone", "ipv4-port", "ipv4", "ipv6", "localhost", "port",
         "private-endpoint", "secondary", "microsoft-routing", "internet-routing", "routing-secondary"],
)
def test_every_endpoint_style_names_the_same_kind_of_key(uri, expected):
    assert parse_blob_url(uri) == BlobKey(*expected)


def test_host_case_is_ignored():
    assert parse_blob_url("HTTPS://ACCT1.BLOB.Core.Windows.NET/vhds/os.vhd") == BlobKey("acct1", "vhds", "os.vhd")


def test_path_style_account_case_is_ignored():
    assert parse_blob_url("http://LOCALHOST:10000/ACCT1/vhds/os.vhd") == BlobKey("acct1", "vhds", "os.vhd")


def test_container_case_is_ignored():
    assert parse_blob_url("https://acct1.blob.core.windows.net/VHDS/os.vhd").container == "vhds"


def test_blob_name_case_is_preserved_exactly():
    assert parse_blob_url("https://acct1.blob.core.windows.net/vhds/MyDisk.VHD").blob == "MyDisk.VHD"


@pytest.mark.parametrize(
    "raw, name",
    [
        ("my%20disk.vhd", "my disk.vhd"),
        ("my disk.vhd", "my disk.vhd"),
        ("100%25%20full.vhd", "100% full.vhd"),
        ("caf%C3%A9.vhd", "café.vhd"),
        ("café.vhd", "café.vhd"),
        ("%E6%97%A5%E6%9C%AC.vhd", "日本.vhd"),
        ("日本.vhd", "日本.vhd"),
        ("a/b/c.vhd", "a/b/c.vhd"),
        ("a%2Fb%2Fc.vhd", "a/b/c.vhd"),
        ("a%2fb/c.vhd", "a/b/c.vhd"),
        ("%61%62%63.vhd", "abc.vhd"),
        ("q%3Fx%23y.vhd", "q?x#y.vhd"),
    ],
)
def test_blob_name_is_exact_after_percent_decoding(raw, name):
    assert parse_blob_url(f"https://acct1.blob.core.windows.net/vhds/{raw}") == BlobKey("acct1", "vhds", name)


@pytest.mark.parametrize(
    "suffix",
    [
        "?sv=2021-08-06&sr=b&sig=abc%2Bdef%3D",
        "?snapshot=2024-01-01T00:00:00.0000000Z",
        "#section",
        "?snapshot=2024-01-01T00:00:00.0000000Z#frag",
    ],
)
def test_query_string_and_fragment_are_ignored(suffix):
    assert parse_blob_url(f"https://acct1.blob.core.windows.net/vhds/os.vhd{suffix}") == BlobKey(
        "acct1", "vhds", "os.vhd"
    )


def test_single_segment_names_a_blob_in_the_root_container():
    assert parse_blob_url("https://acct1.blob.core.windows.net/os.vhd") == BlobKey("acct1", "$root", "os.vhd")


def test_single_segment_path_style_names_a_blob_in_the_root_container():
    assert parse_blob_url("http://127.0.0.1:10000/acct1/os.vhd") == BlobKey("acct1", "$root", "os.vhd")


def test_explicit_root_container_encoded_dollar():
    assert parse_blob_url("https://acct1.blob.core.windows.net/%24root/os.vhd") == BlobKey("acct1", "$root", "os.vhd")


def test_trailing_dot_of_a_fully_qualified_host_is_ignored():
    assert parse_blob_url("https://acct1.blob.core.windows.net./vhds/os.vhd") == BlobKey("acct1", "vhds", "os.vhd")


def test_blob_name_of_exactly_1024_characters_is_accepted():
    name = "x" * 1020 + ".vhd"
    assert parse_blob_url(f"https://acct1.blob.core.windows.net/vhds/{name}").blob == name


@pytest.mark.parametrize(
    "uri",
    [
        "https://acct1.blob.core.windows.net/vhds",
        "https://acct1.blob.core.windows.net/vhds/",
        "https://ACCT1.blob.core.windows.net/VHDS/",
        "http://127.0.0.1:10000/acct1/vhds",
        "http://127.0.0.1:10000/acct1/vhds/",
        "https://acct1.blob.core.windows.net/vhds?restype=container",
    ],
)
def test_container_url_with_or_without_trailing_slash(uri):
    assert parse_container_url(uri) == ContainerKey("acct1", "vhds")


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("ftp://acct1.blob.core.windows.net/vhds/os.vhd", id="ftp-scheme"),
        pytest.param("file:///vhds/os.vhd", id="file-scheme"),
        pytest.param("acct1.blob.core.windows.net/vhds/os.vhd", id="no-scheme"),
        pytest.param("https:///vhds/os.vhd", id="no-host"),
        pytest.param("https://acct1.file.core.windows.net/share/os.vhd", id="file-service"),
        pytest.param("https://acct1.dfs.core.windows.net/vhds/os.vhd", id="dfs-service"),
        pytest.param("https://example.com/vhds/os.vhd", id="example.com"),
        pytest.param("https://acct1.blob/vhds/os.vhd", id="two-labels"),
        pytest.param("https://blob.core.windows.net/vhds/os.vhd", id="no-account-label"),
        pytest.param("https://ab.blob.core.windows.net/vhds/os.vhd", id="account-too-short"),
        pytest.param("https://" + "a" * 25 + ".blob.core.windows.net/vhds/os.vhd", id="account-too-long"),
        pytest.param("https://acct-1.blob.core.windows.net/vhds/os.vhd", id="account-hyphen"),
        pytest.param("http://127.0.0.1:10000/ab/vhds/os.vhd", id="path-style-bad-account"),
        pytest.param("http://127.0.0.1:10000/acct1", id="path-style-no-container"),
        pytest.param("https://acct1.blob.core.windows.net:99999/vhds/os.vhd", id="bad-port"),
        pytest.param("https://acct1.blob.core.windows.net/a/os.vhd", id="container-too-short"),
        pytest.param("https://acct1.blob.core.windows.net/a--b/os.vhd", id="container-double-hyphen"),
        pytest.param("https://acct1.blob.core.windows.net/-ab/os.vhd", id="container-leading-hyphen"),
        pytest.param("https://acct1.blob.core.windows.net/ab-/os.vhd", id="container-trailing-hyphen"),
        pytest.param("https://acct1.blob.core.windows.net/" + "a" * 64 + "/os.vhd", id="container-too-long"),
        pytest.param("https://acct1.blob.core.windows.net/vh_ds/os.vhd", id="container-underscore"),
        pytest.param("https://acct1.blob.core.windows.net//os.vhd", id="empty-container"),
        pytest.param("https://acct1.blob.core.windows.net/", id="no-path"),
        pytest.param("https://acct1.blob.core.windows.net", id="nothing-after-host"),
        pytest.param("https://acct1.blob.core.windows.net/vhds/%ff.vhd", id="invalid-utf8"),
        pytest.param("https://acct1.blob.core.windows.net/vhds/%C3(.vhd", id="truncated-utf8"),
        pytest.param("https://acct1.blob.core.windows.net/vhds/" + "x" * 1025, id="name-too-long"),
        pytest.param(" https://acct1.blob.core.windows.net/vhds/os.vhd", id="leading-space"),
        pytest.param("https://acct1.blob.core.windows.net/vhds/os.vhd ", id="trailing-space"),
        pytest.param("https://acct1.blob.core.windows.net/vhds/os.vhd\n", id="trailing-newline"),
        pytest.param("https://acct1.blob.core.windows.net/vhds/o\ts.vhd", id="inner-tab"),
        pytest.param("", id="empty"),
    ],
)
def test_unplaceable_blob_url_is_refused(uri):
    with pytest.raises(UrlError):
        parse_blob_url(uri)


@pytest.mark.parametrize(
    "uri",
    ["https://acct1.blob.core.windows.net/vhds/", "http://127.0.0.1:10000/acct1/vhds/"],
)
def test_container_url_with_trailing_slash_is_not_a_root_blob(uri):
    # The blob part is present but empty: an empty blob name, never the blob "$root/vhds".
    with pytest.raises(UrlError):
        parse_blob_url(uri)


def test_blob_name_with_a_lone_surrogate_is_refused():
    with pytest.raises(UrlError):
        parse_blob_url("https://acct1.blob.core.windows.net/vhds/\ud800.vhd")


def test_url_error_names_the_uri_and_the_reason():
    with pytest.raises(UrlError) as err:
        parse_blob_url("https://example.com/vhds/os.vhd")
    assert err.value.uri == "https://example.com/vhds/os.vhd"
    assert "example.com" in str(err.value)
    assert err.value.why


def test_non_string_uri_is_refused():
    with pytest.raises(UrlError):
        parse_blob_url(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uri",
    [
        "https://acct1.blob.core.windows.net/vhds/os.vhd",
        "http://127.0.0.1:10000/acct1/vhds/os.vhd",
        "https://acct1.blob.core.windows.net/a--b",
        "https://acct1.blob.core.windows.net/",
        "ftp://acct1.blob.core.windows.net/vhds",
        "https://example.com/vhds",
    ],
)
def test_container_url_that_names_a_blob_or_is_unplaceable_is_refused(uri):
    with pytest.raises(UrlError):
        parse_container_url(uri)


# --- rendering -----------------------------------------------------------------------------------


def test_blob_url_percent_encodes_but_keeps_slashes():
    key = BlobKey("acct1", "vhds", "a dir/100% é?#.vhd")
    assert blob_url("https://acct1.blob.core.windows.net/", key) == (
        "https://acct1.blob.core.windows.net/vhds/a%20dir/100%25%20%C3%A9%3F%23.vhd"
    )


def test_blob_url_under_a_path_style_endpoint():
    key = BlobKey("acct1", "vhds", "os.vhd")
    assert blob_url("http://127.0.0.1:10000/acct1", key) == "http://127.0.0.1:10000/acct1/vhds/os.vhd"


def test_default_blob_endpoint_is_the_public_cloud():
    assert default_blob_endpoint("acct1") == "https://acct1.blob.core.windows.net"


# --- properties ----------------------------------------------------------------------------------

LOWER_DIGITS = string.ascii_lowercase + string.digits
accounts = st.text(LOWER_DIGITS, min_size=3, max_size=24)
_plain_containers = (
    st.lists(st.text(LOWER_DIGITS, min_size=1, max_size=10), min_size=1, max_size=7)
    .map("-".join)
    .filter(lambda c: 3 <= len(c) <= 63)
)
containers = st.one_of(_plain_containers, st.sampled_from(["$root", "$web", "$logs"]))
# Valid names: any text, but no "." or ".." path segment (an HTTP client would resolve it away, so
# the parser refuses those: tests/test_fuzz.py covers the refusal).
blob_names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=1024).filter(
    lambda name: not any(segment in (".", "..") for segment in name.split("/"))
)

HOST_SUFFIXES = [
    "blob.core.windows.net",
    "blob.core.usgovcloudapi.net",
    "blob.core.chinacloudapi.cn",
    "blob.local.azurestack.external",
    "z07.blob.storage.azure.net",
    "blob.example.internal",
]
# Characters that may stand for themselves in a URL path; anything else is always percent-encoded.
OPTIONALLY_LITERAL = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/"


def _random_case(draw, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips))


@st.composite
def endpoints(draw, account: str) -> str:
    """A blob endpoint for ``account`` in any of the styles Azure and its stand-ins serve."""
    style = draw(st.sampled_from(["host", "ipv4", "ipv6", "localhost"]))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    port_part = f":{port}" if port is not None else ""
    if style == "host":
        host = _random_case(draw, f"{account}.{draw(st.sampled_from(HOST_SUFFIXES))}")
        return f"{draw(st.sampled_from(['https', 'http', 'HTTPS']))}://{host}{port_part}"
    host = {"ipv4": "127.0.0.1", "ipv6": "[::1]", "localhost": _random_case(draw, "localhost")}[style]
    return f"http://{host}{port_part}/{_random_case(draw, account)}"


@st.composite
def encodings(draw, text: str, *, may_leave_slash: bool = True) -> str:
    """``text`` with a random choice of characters percent-encoded (letters included)."""
    out = []
    literal_ok = set(draw(st.sets(st.sampled_from(OPTIONALLY_LITERAL)))) | set(draw(st.sets(st.sampled_from("é日本ü"))))
    if not may_leave_slash:
        literal_ok.discard("/")
    upper_hex = draw(st.booleans())
    for ch in text:
        if ch in literal_ok:
            out.append(ch)
        else:
            enc = quote(ch, safe="")
            if enc == ch:  # quote leaves unreserved characters alone: encode them by hand
                enc = "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
            out.append(enc if upper_hex else enc.lower())
    return "".join(out)


@st.composite
def rendered_urls(draw):
    account, container, name = draw(accounts), draw(containers), draw(blob_names)
    endpoint = draw(endpoints(account))
    raw_container = draw(encodings(_random_case(draw, container), may_leave_slash=False))
    raw_name = draw(encodings(name))
    tail = draw(st.sampled_from(["", "?sig=abc", "?snapshot=2024-01-01T00:00:00Z", "#x"]))
    return f"{endpoint}/{raw_container}/{raw_name}{tail}", BlobKey(account, container, name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rendered_urls())
def test_any_valid_url_parses_to_exactly_the_original_key(case):
    uri, key = case
    assert parse_blob_url(uri) == key


@settings(max_examples=200, deadline=None)
@given(accounts, containers, blob_names, st.data())
def test_round_trip_through_blob_url(account, container, name, data):
    key = BlobKey(account, container, name)
    endpoint = data.draw(endpoints(account))
    assert parse_blob_url(blob_url(endpoint, key)) == key


@settings(max_examples=200, deadline=None)
@given(accounts, containers, st.data())
def test_container_round_trip_with_and_without_trailing_slash(account, container, data):
    endpoint = data.draw(endpoints(account))
    raw = data.draw(encodings(_random_case(data.draw, container), may_leave_slash=False))
    slash = data.draw(st.sampled_from(["", "/"]))
    assert parse_container_url(f"{endpoint}/{raw}{slash}") == ContainerKey(account, container)


def _url_texts():
    prefix = st.sampled_from(
        [
            "",
            "https://",
            "https://acct1.blob.core.windows.net/",
            "https://acct1.blob.core.windows.net/vhds/",
            "http://127.0.0.1:10000/",
            "http://127.0.0.1:10000/acct1/",
            "http://[::1]:10000/acct1/vhds/",
        ]
    )
    body = st.text(st.characters(exclude_categories=("Cs",)), max_size=60) | st.text(
        "%/?#:.@[]aAbBfF0123456789 -$", max_size=60
    )
    return st.tuples(prefix, body).map("".join)


@settings(max_examples=500, deadline=None)
@given(_url_texts())
def test_never_a_wrong_key_any_text_is_refused_or_parses_stably(text):
    try:
        key = parse_blob_url(text)
    except UrlError:
        return
    assert key.account == key.account.lower() and key.container == key.container.lower()
    assert 1 <= len(key.blob) <= 1024
    assert parse_blob_url(blob_url(default_blob_endpoint(key.account), key)) == key
    assert parse_blob_url(blob_url(f"http://127.0.0.1:10000/{key.account}", key)) == key


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accounts, containers, blob_names, st.data())
def test_urls_differing_only_in_host_case_and_encoding_name_the_same_blob(account, container, name, data):
    def one_url() -> str:
        endpoint = data.draw(endpoints(account))
        raw_container = data.draw(encodings(_random_case(data.draw, container), may_leave_slash=False))
        return f"{endpoint}/{raw_container}/{data.draw(encodings(name))}"

    assert parse_blob_url(one_url()) == parse_blob_url(one_url()) == BlobKey(account, container, name)


@settings(max_examples=200, deadline=None)
@given(accounts, containers, blob_names, blob_names, st.data())
def test_two_different_blob_names_never_share_a_key(account, container, name1, name2, data):
    assume(name1 != name2)
    endpoint = data.draw(endpoints(account))
    u1 = f"{endpoint}/{container}/{data.draw(encodings(name1))}"
    u2 = f"{endpoint}/{container}/{data.draw(encodings(name2))}"
    assert parse_blob_url(u1) != parse_blob_url(u2)


def _outcome(parse, uri):
    try:
        return parse(uri)
    except UrlError as exc:
        return ("error", exc.why)


_FAST_SHAPES = st.sampled_from([
    "https://acct1.blob.core.windows.net/vhds/", "http://acct1.blob.core.usgovcloudapi.net/vhds/",
    "https://acct1.blob.core.chinacloudapi.cn/a-b/", "https://acct1.blob.core.windows.net/v/",
    "https://acct1.blob.core.windows.net/-vhds/", "https://ACCT1.blob.core.windows.net/vhds/",
    "https://acct1.blob.core.windows.net:443/vhds/", "https://acct1.blob.core.windows.net/vhds",
    "https://acct1.blob.core.windows.net//", "https://", "",
])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_url_texts(), rendered_urls().map(lambda case: case[0]),
                 st.tuples(_FAST_SHAPES, st.text(max_size=40) | st.text("./ ?#%\\\taZ09-_", max_size=40)).map("".join)))
def test_the_fast_parsers_agree_with_the_general_one(text):
    """parse_blob_url's one-regex path and blob_url_parser's prefix memo give the general parser's
    key or its error, whatever the text (the memo is shared across the examples, as in a pass)."""
    general = _outcome(parse_blob_url_general, text)
    assert _outcome(parse_blob_url, text) == general
    assert _outcome(_SHARED_PARSER, text) == general
    assert _outcome(blob_url_parser(), text) == general


_SHARED_PARSER = blob_url_parser()


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=1, max_size=40) | st.text("azAZ09-_.~/ %?#+é漢", min_size=1, max_size=40))
def test_blob_names_are_quoted_as_quote_does_with_or_without_its_work(name):
    """quote_blob_name skips quote() for plain names: its output is quote()'s, for every name."""
    assert quote_blob_name(name) == quote(name, safe="/")


# --- redaction of URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://acct1.blob.core.windows.net/vhds/a.vhd", "https://acct1.blob.core.windows.net/vhds/a.vhd"),
        ("https://acct1.blob.core.windows.net/?sv=2024&sig=S3cr3t%3D", "https://acct1.blob.core.windows.net/?<query redacted>"),
        ("http://user:pw@127.0.0.1:10000/acct1", "http://<redacted>@127.0.0.1:10000/acct1"),
        ("https://u:p@h:1/x?sig=abc#frag", "https://<redacted>@h:1/x?<query redacted>"),
        ("https://u:p?w#d@h/x", "https://<redacted>@h/x"),  # a password holding ? and #
        ("https://token@h", "https://<redacted>@h"),
        ("https://h/p?", "https://h/p?"),
        ("not a url?sig=abc", "not a url?<query redacted>"),
    ],
)
def test_redact_url_hides_userinfo_and_query_and_keeps_host_and_path(url, shown):
    from gc_daemon.urls import redact_query, redact_url

    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent
    assert redact_query(url) == shown  # the older name


def test_redact_text_redacts_every_url_and_secret_parameters_in_free_text():
    from gc_daemon.urls import redact_text

    text = ("AccountStorage(blob_endpoint='https://u:pw1@h/a?sv=1&sig=S1') failed: HTTPConnection: "
            "Max retries exceeded with url: /a?restype=container&sig=S2?comp=list (refused); "
            "db postgresql+psycopg://gc:pw2@db/x; sig=notaquery")
    out = redact_text(text)
    assert out == ("AccountStorage(blob_endpoint='https://<redacted>@h/a?<query redacted>') failed: HTTPConnection: "
                   "Max retries exceeded with url: /a?restype=container&sig=<redacted> (refused); "
                   "db postgresql+psycopg://<redacted>@db/x; sig=notaquery")
    assert redact_text(out) == out
    assert redact_text("plain text, no url") == "plain text, no url"


@pytest.mark.parametrize("endpoint", ["http://user:pw@127.0.0.1:10000/acct1", "http://127.0.0.1:10000/acct1?sv=1&sig=x",
                                      "http://127.0.0.1:10000/acct1/", "http://u:p@127.0.0.1:10000/acct1/?sig=x#f"])
def test_a_canonical_blob_url_never_carries_the_endpoints_userinfo_or_query(endpoint):
    from gc_daemon.urls import blob_url

    assert blob_url(endpoint, BlobKey("acct1", "vhds", "a b.vhd")) == "http://127.0.0.1:10000/acct1/vhds/a%20b.vhd"
