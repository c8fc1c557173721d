"""Hypothesis fuzzing of the parsers a wrong answer from which deletes disks in use.

- ``check_list_page``, the ARM page validator, against an oracle of its documented rules;
- every extractor, fed pages of realistic resources mutated at random (fields removed, set to null,
  given a wrong type, lists and objects swapped) through the real SDK pager and model
  deserialisation (a fake transport answers the list call): it either raises (the source fails
  closed) or returns exactly the URIs present at the documented paths, never one invented or dropped;
- ``parse_blob_url``: "never a wrong key" on adversarial spellings (mixed and double encodings,
  dot segments, control characters, IDNA hosts, userinfo, ports, IPv6).
"""

from __future__ import annotations

import io
import json
import string
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from urllib3.response import HTTPResponse

from gc_daemon.sources import base as c
from gc_daemon.sources import disks, galleries, images, scale_sets, snapshots, virtual_machines
from gc_daemon.azure.credentials import EmulatorCredential
from gc_daemon.domain import BlobKey
from gc_daemon.urls import UrlError, blob_url, parse_blob_url
from sandbox import arm as a

SUB = "00000000-0000-0000-0000-000000000001"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------------
# JSON-like values
# --------------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", " ", "https://acct1.blob.core.windows.net/vhds/x.vhd", "/subscriptions/x"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


# --------------------------------------------------------------------------------------------------
# check_list_page against its oracle
# --------------------------------------------------------------------------------------------------


class _Http:
    def __init__(self, text: str, status: int = 200) -> None:
        self.status_code = status
        self._text = text

    def text(self) -> str:
        return self._text


class _Pipeline:
    def __init__(self, text: str, status: int = 200) -> None:
        self.http_response = _Http(text, status)


def _page_is_sound(body: Any) -> bool:
    """The documented rules: a JSON object, a `value` list of objects each with a non-empty string
    `id`, and a `nextLink` that is absent, null or a string."""
    if not isinstance(body, dict) or not isinstance(body.get("value"), list):
        return False
    for item in body["value"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            return False
    return body.get("nextLink") is None or isinstance(body["nextLink"], str)


pages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"value": st.lists(st.one_of(json_values, st.fixed_dictionaries({"id": st.one_of(st.text(max_size=6), json_values)})), max_size=4)},
        optional={"nextLink": st.one_of(st.none(), st.text(max_size=10), json_values)},
    ),
)


@FAST
@given(pages)
def test_check_list_page_accepts_exactly_the_sound_pages(body):
    try:
        c.check_list_page(_Pipeline(json.dumps(body)))
    except c.MalformedPage:
        assert not _page_is_sound(body), body
    else:
        assert _page_is_sound(body), body


@FAST
@given(st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_check_list_page_refuses_any_text_that_is_not_a_sound_page(text):
    try:
        body = json.loads(text)
    except ValueError:
        with pytest.raises(c.MalformedPage):
            c.check_list_page(_Pipeline(text))
        return
    try:
        c.check_list_page(_Pipeline(text))
    except c.MalformedPage:
        assert not _page_is_sound(body)
    else:
        assert _page_is_sound(body)


@pytest.mark.parametrize("status", [201, 204, 301, 404, 429, 500])
def test_check_list_page_leaves_non_200_answers_to_the_retry_policy_and_the_pager(status):
    assert c.check_list_page(_Pipeline("not json", status)) is None


# --------------------------------------------------------------------------------------------------
# Extractors through the SDK: a fake transport serves one page for whatever the client asks
# --------------------------------------------------------------------------------------------------


class _OnePage(HTTPAdapter):
    body: bytes = b'{"value": []}'

    def send(self, request, **kwargs):
        raw = HTTPResponse(
            body=io.BytesIO(self.body),
            headers={"Content-Type": "application/json", "Content-Length": str(len(self.body))},
            status=200, preload_content=False, decode_content=False,
        )
        return self.build_response(request, raw)


@pytest.fixture(scope="module")
def fake_arm():
    from azure.core.pipeline.transport import RequestsTransport
    from azure.mgmt.compute import ComputeManagementClient

    adapter = _OnePage()
    session = requests.Session()
    session.mount("https://", adapter)
    client = ComputeManagementClient(
        EmulatorCredential(), SUB, base_url="https://arm.invalid", credential_scopes=["https://arm.invalid/.default"],
        transport=RequestsTransport(session=session, session_owner=False), retry_total=0,
    )
    yield adapter, client
    client.close()


U = "https://acct{}.blob.core.windows.net/vhds/{}.vhd"


def _vm(sub_builder=a.vm, **kw):
    return sub_builder(SUB, "rg1", "r1", os_vhd=U.format(1, "os"), os_image=U.format(1, "osimg"),
                       data_vhds=[U.format(1, "d0"), {"vhd": U.format(2, "d1"), "image": U.format(2, "d1img")}], **kw)


def _with_security(resource):
    resource["properties"]["creationData"]["securityDataUri"] = U.format(1, "sec")
    return resource


# kind -> (builder of a realistic resource, reader(client) -> refs, documented JSON paths of URIs)
def _guard() -> dict:
    """What the inventory hands every list call: a fresh page check."""
    return c.PageGuard("https://management.azure.com").kwargs()


# A path is a list of keys; "*" walks every element of a list.
SP = ["properties", "storageProfile"]
KINDS = {
    "vm": (lambda: _vm(), lambda client: virtual_machines.read(client, _guard()).references,
           [SP + ["osDisk", "vhd", "uri"], SP + ["osDisk", "image", "uri"],
            SP + ["dataDisks", "*", "vhd", "uri"], SP + ["dataDisks", "*", "image", "uri"]]),
    "vmss_vm": (lambda: a.vmss_vm(SUB, "rg1", "ss", 0, os_vhd=U.format(1, "os"), os_image=U.format(1, "img"),
                                  data_vhds=[U.format(1, "d0"), U.format(1, "d1")]),
                lambda client: scale_sets.read_instances(client, "rg1", "ss", _guard()).references,
                [SP + ["osDisk", "vhd", "uri"], SP + ["osDisk", "image", "uri"],
                 SP + ["dataDisks", "*", "vhd", "uri"], SP + ["dataDisks", "*", "image", "uri"]]),
    "vmss": (lambda: a.vmss(SUB, "rg1", "ss", vhd_containers=["https://acct1.blob.core.windows.net/c1",
                                                               "https://acct2.blob.core.windows.net/c2"],
                            os_image=U.format(1, "img")),
             lambda client: scale_sets.read_scale_sets(client, _guard())[0],
             [["properties", "virtualMachineProfile", "storageProfile", "osDisk", "vhdContainers", "*"],
              ["properties", "virtualMachineProfile", "storageProfile", "osDisk", "image", "uri"]]),
    "image": (lambda: a.image(SUB, "rg1", "img", os_blob=U.format(1, "os"), data_blobs=[U.format(1, "d0"), U.format(2, "d1")]),
              lambda client: images.read(client, _guard()).references,
              [SP + ["osDisk", "blobUri"], SP + ["dataDisks", "*", "blobUri"]]),
    "disk": (lambda: a.disk(SUB, "rg1", "d", source_uri=U.format(1, "src"), security_data_uri=U.format(1, "sec"),
                            security_metadata_uri=U.format(1, "meta")),
             lambda client: disks.read(client, _guard()).references,
             [["properties", "creationData", k] for k in ("sourceUri", "securityDataUri", "securityMetadataUri")]),
    "snapshot": (lambda: _with_security(a.snapshot(SUB, "rg1", "s", source_uri=U.format(1, "src"))), lambda client: snapshots.read(client, _guard()).references,
                 [["properties", "creationData", k] for k in ("sourceUri", "securityDataUri", "securityMetadataUri")]),
    "gallery_version": (lambda: a.gallery_image_version(SUB, "rg1", "g", "i", "1.0.0", os_source=U.format(1, "os"),
                                                        data_sources=[U.format(1, "d0"), U.format(2, "d1")]),
                        lambda client: galleries.read_versions(client, "rg1", "g", "i", _guard()).references,
                        [SP + ["osDiskImage", "source", "uri"], SP + ["dataDiskImages", "*", "source", "uri"]]),
}


def _walk(node: Any, path: list[str]) -> list[Any]:
    """Values at ``path`` where every step has the right JSON type (a missing step yields nothing)."""
    if not path:
        return [node]
    head, rest = path[0], path[1:]
    if head == "*":
        return [v for item in node for v in _walk(item, rest)] if isinstance(node, list) else []
    if isinstance(node, dict) and head in node:
        return _walk(node[head], rest)
    return []


def _all_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _all_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _all_paths(v, prefix + (i,))
    return out


def _set(node: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = node
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return node


@st.composite
def mutated(draw, kind: str):
    resource = KINDS[kind][0]()
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _all_paths(resource) if p]
        path = draw(st.sampled_from(paths))
        parent = resource
        for step in path[:-1]:
            parent = parent[step]
        old = parent[path[-1]]
        how = draw(st.sampled_from(["delete", "null", "random", "wrap", "unwrap", "stringify", "uri"]))
        if how == "delete" and isinstance(parent, dict):
            _set(resource, path, None, delete=True)
        elif how == "null":
            _set(resource, path, None)
        elif how == "random":
            _set(resource, path, draw(json_values))
        elif how == "wrap":
            _set(resource, path, [old])
        elif how == "unwrap" and isinstance(old, list) and old:
            _set(resource, path, old[0])
        elif how == "stringify":
            _set(resource, path, json.dumps(old))
        elif how == "uri":  # another string, odd but a string: it must come back exactly
            _set(resource, path, draw(st.text(min_size=1, max_size=30)))
    return resource


def _read(fake_arm, kind: str, items: list[Any]):
    adapter, client = fake_arm
    adapter.body = json.dumps({"value": items}).encode()
    return KINDS[kind][1](client)


def _check(fake_arm, kind: str, items: list[Any]) -> str:
    expected = []
    for item in items:
        for path in KINDS[kind][2]:
            expected += [v for v in _walk(item, path) if v is not None]
    try:
        refs = _read(fake_arm, kind, items)
    except Exception:  # noqa: BLE001 - any error fails the source closed: always allowed
        return "raised"
    got = sorted(r.uri for r in refs)
    strings = sorted(v for v in expected if isinstance(v, str))
    others = [v for v in expected if not isinstance(v, str)]
    # A non-string at a URI path may come back as the SDK's str() of it: it must then be unplaceable
    # (the pass fails closed when it parses the references), never a real blob.
    extra = list(got)
    for s in strings:
        assert s in extra, f"{kind}: the URI {s!r} present in the input was dropped: got {got}"
        extra.remove(s)
    assert len(extra) <= len(others), f"{kind}: invented URIs {extra} (input held {strings} and {others})"
    for e in extra:
        with pytest.raises(UrlError):
            parse_blob_url(e)
    return "returned"


def test_unmutated_resources_give_every_documented_uri(fake_arm):
    for kind in KINDS:
        item = KINDS[kind][0]()
        assert _check(fake_arm, kind, [item, KINDS[kind][0]()]) == "returned", kind
        expected = [v for p in KINDS[kind][2] for v in _walk(item, p) if v is not None]
        assert len(expected) >= 2, kind


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_extractor_returns_exactly_the_present_uris_or_fails_closed(fake_arm, kind, data):
    items = [data.draw(mutated(kind)), KINDS[kind][0]()]  # a mutated resource next to a sound one
    if data.draw(st.booleans()):
        items.reverse()
    _check(fake_arm, kind, items)


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_extractor_on_arbitrary_items_never_invents_or_drops(fake_arm, kind, data):
    item = data.draw(st.dictionaries(st.sampled_from(["id", "name", "properties", "type"]), json_values, max_size=4))
    _check(fake_arm, kind, [item])


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_page_whose_value_is_not_a_list_fails_the_source(fake_arm, kind):
    adapter, client = fake_arm
    for body in ({}, {"value": None}, {"value": {"id": "/x"}}, {"value": "x"}, {"value": [{"name": "no id"}]}, []):
        adapter.body = json.dumps(body).encode()
        with pytest.raises(Exception):
            KINDS[kind][1](client)


# --------------------------------------------------------------------------------------------------
# parse_blob_url: never a wrong key
# --------------------------------------------------------------------------------------------------

LOWER = string.ascii_lowercase + string.digits
accounts = st.text(LOWER, min_size=3, max_size=24)
containers = st.text(LOWER, min_size=3, max_size=12)
names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\\"), min_size=1, max_size=40).filter(
    lambda n: not any(seg in (".", "..") for seg in n.split("/"))
)


def _endpoint(draw, account: str) -> str:
    style = draw(st.sampled_from(["host", "userinfo", "port", "ipv4", "ipv6", "ipv6-mapped", "localhost"]))
    if style == "host":
        return f"https://{account}.blob.core.windows.net"
    if style == "userinfo":
        return f"https://{draw(st.sampled_from(['user', 'user:pw', 'a%40b']))}@{account}.blob.core.windows.net"
    if style == "port":
        return f"https://{account}.blob.core.windows.net:{draw(st.integers(1, 65535))}"
    host = {"ipv4": "127.0.0.1:10000", "ipv6": "[::1]:10000", "ipv6-mapped": "[::ffff:127.0.0.1]", "localhost": "localhost"}[style]
    return f"http://{host}/{account}"


@st.composite
def double_encoded(draw):
    account, container, name = draw(accounts), draw(containers), draw(names)
    once = quote(name, safe="/")
    return f"{_endpoint(draw, account)}/{container}/{quote(once, safe='/')}", BlobKey(account, container, once)


@FAST
@given(double_encoded())
def test_percent_decoding_happens_exactly_once(case):
    uri, key = case
    assert parse_blob_url(uri) == key


@st.composite
def mixed_encoded(draw):
    """Each character of the name left literal where it may be, or encoded, in upper or lower hex,
    as UTF-8: every spelling names the same blob."""
    account, container, name = draw(accounts), draw(containers), draw(names)
    out = []
    for ch in name:
        literal_ok = ch.isalnum() or ch in "-._~!$&'()*+,;=:@/"
        if literal_ok and draw(st.booleans()):
            out.append(ch)
        else:
            hexes = "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
            out.append(hexes if draw(st.booleans()) else hexes.lower())
    return f"{_endpoint(draw, account)}/{container}/{''.join(out)}", BlobKey(account, container, name)


@FAST
@given(mixed_encoded())
def test_any_mixture_of_encodings_names_the_same_blob(case):
    uri, key = case
    assert parse_blob_url(uri) == key


@FAST
@given(accounts, containers, names, st.sampled_from(["\x01", "\x1f", "\x7f", "\x0b", "\x0c", "\u0085", "\u2028", "\ufeff"]), st.integers(0, 2))
def test_control_characters_are_refused_or_kept_verbatim(account, container, name, ctrl, where):
    """A control character is part of the name (an HTTP client percent-encodes it) or refused;
    it never moves the key elsewhere (another container, account, or a shortened name)."""
    pos = [0, len(name) // 2, len(name)][where]
    raw = name[:pos] + ctrl + name[pos:]
    uri = f"https://{account}.blob.core.windows.net/{container}/{quote(raw[:pos], safe='/')}{ctrl}{quote(raw[pos + 1:], safe='/')}"
    try:
        key = parse_blob_url(uri)
    except UrlError:
        return
    assert key == BlobKey(account, container, raw)


@pytest.mark.parametrize(
    "host",
    [
        "xn--acct1-.blob.core.windows.net",  # punycode label: not an account name
        "xn--80ak6aa92e.blob.core.windows.net",  # a punycoded Cyrillic look-alike
        "\u0430cct1.blob.core.windows.net",  # Cyrillic a
        "\uff41cct1.blob.core.windows.net",  # fullwidth a (IDNA maps it to "a")
        "acct1\u3002blob\u3002core\u3002windows\u3002net",  # ideographic full stops
        "acct\u0131.blob.core.windows.net",  # dotless i
    ],
)
def test_idna_hosts_are_refused_rather_than_mapped(host):
    """A host that is not plain ASCII is never taken for a storage account (IDNA would map some of
    them to real account names: refusing fails the pass closed, guessing could protect the wrong one)."""
    with pytest.raises(UrlError):
        parse_blob_url(f"https://{host}/vhds/os.vhd")


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("https://user@acct1.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct2.blob.core.windows.net@acct1.blob.core.windows.net/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("https://acct1.blob.core.windows.net:8443/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("http://[::ffff:127.0.0.1]:10000/acct1/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
        ("http://[::1%25lo]:10000/acct1/vhds/os.vhd", ("acct1", "vhds", "os.vhd")),
    ],
)
def test_userinfo_ports_and_ipv6_name_the_host_the_request_goes_to(uri, expected):
    assert tuple(parse_blob_url(uri)) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "https://acct1.blob.core.windows.net@evil.example/vhds/os.vhd",  # the request goes to evil.example
        "https://acct1.blob.core.windows.net:443:80/vhds/os.vhd",
        "https://acct1.blob.core.windows.net:-1/vhds/os.vhd",
        "http://[::1/acct1/vhds/os.vhd",
        "http://[acct1.blob.core.windows.net]/vhds/os.vhd",
        "http://127.1:10000/acct1/vhds/os.vhd",
        "http://0x7f.0.0.1/acct1/vhds/os.vhd",
    ],
)
def test_hosts_that_are_not_the_account_are_refused(uri):
    with pytest.raises(UrlError):
        parse_blob_url(uri)


DOT_SEGMENTS = [
    ("https://acct1.blob.core.windows.net/vhds/sub/../os.vhd", ("acct1", "vhds", "os.vhd")),
    ("https://acct1.blob.core.windows.net/vhds/./os.vhd", ("acct1", "vhds", "os.vhd")),
    ("https://acct1.blob.core.windows.net/vhds/../other/os.vhd", ("acct1", "other", "os.vhd")),
    ("https://acct1.blob.core.windows.net/vhds/sub/%2E%2E/os.vhd", ("acct1", "vhds", "os.vhd")),
    ("http://127.0.0.1:10000/acct1/vhds/a/b/../../os.vhd", ("acct1", "vhds", "os.vhd")),
]


@pytest.mark.parametrize("uri, resolved", DOT_SEGMENTS)
def test_dot_segments_are_refused_or_resolved_like_an_http_client(uri, resolved):
    try:
        key = parse_blob_url(uri)
    except UrlError:
        return
    assert tuple(key) == resolved


@pytest.mark.parametrize("uri, slash_form", [
    ("https://acct1.blob.core.windows.net/vhds\\os.vhd", "https://acct1.blob.core.windows.net/vhds/os.vhd"),
    ("https://acct1.blob.core.windows.net/vhds/a\\os.vhd", "https://acct1.blob.core.windows.net/vhds/a/os.vhd"),
])
def test_raw_backslashes_are_refused_or_read_as_slashes(uri, slash_form):
    try:
        key = parse_blob_url(uri)
    except UrlError:
        return
    assert key == parse_blob_url(slash_form)


def test_a_reference_with_a_dot_segment_protects_the_blob_it_addresses(gc):
    gc.page("vhds", "os.vhd")
    endpoint = gc.azurite.blob_endpoint("gcacct1")
    gc.compute(a.vm(SUB, "rg1", "vm1", os_vhd=f"{endpoint}/vhds/sub/../os.vhd"))
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    result = gc.scan()
    assert gc.exists("vhds", "os.vhd"), f"the disk of vm1 was deleted (pass {result.outcome})"


@FAST
@given(accounts, containers, names, st.data())
@example("acct1", "vhds", "os.vhd", None)
def test_round_trip_under_every_endpoint_style(account, container, name, data):
    key = BlobKey(account, container, name)
    endpoint = "https://acct1.blob.core.windows.net" if data is None else _endpoint(data.draw, account)
    assert parse_blob_url(blob_url(endpoint, key)) == key
