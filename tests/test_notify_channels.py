"""The notice channels (gc_daemon/notify/channels.py) end to end against real receivers
(sandbox/receivers.py): a signed JSON webhook, Slack and Teams incoming-webhook bodies, email over SMTP
with STARTTLS and AUTH; and every fault a receiver can show (refused, 5xx, 4xx, a held reply, SMTP
4xx/5xx) mapped to a transient or permanent DeliveryError whose message holds no secret."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from gc_daemon.notify import channels as ch
from gc_daemon.notify.model import DeliveryError, Digest, NoticeItem
from sandbox.receivers import HttpReceiver, SmtpReceiver, closed_port
from tests.support.forward_proxy import ForwardProxy

NOW = datetime(2026, 12, 4, 5, 0, tzinfo=timezone.utc)
HOOK_SECRET = "whsec-9f8e7d6c5b4a"
SLACK_PATH = "/services/T0000SECRET/B0000SECRET/XXXXsecretXXXX"
SMTP_USER, SMTP_PASSWORD = "vhdgc-relay-user", "pw-Zq8!x7-secret"
ADAPTER = TypeAdapter(ch.ChannelConfig)
GiB = 1024**3


def item(n: int = 0, **over) -> NoticeItem:
    base = dict(
        kind="vhd", item_id=f"blob:gcacct1/vhds/vm{n}-os.vhd", name=f"vm{n}-os.vhd", location="gcacct1/vhds",
        url=f"https://gcacct1.blob.core.windows.net/vhds/vm{n}-os.vhd", size_bytes=128 * GiB, billed_bytes=12 * GiB,
        monthly_cost=4.0, currency="USD", state="candidate", delete_after=datetime(2026, 12, 11, 9, 30, tzinfo=timezone.utc),
        owner="alice@example.com", holder=f"vm{n}", keep_command=f"vhd-gc keep gcacct1/vhds/vm{n}-os.vhd --reason 'still needed'",
        reason="candidate",
    )
    base.update(over)
    return NoticeItem(**base)


def three_items() -> tuple[NoticeItem, ...]:
    return (
        item(1, monthly_cost=4.4),
        item(2, monthly_cost=4.0, delete_after=datetime(2026, 12, 12, 0, 0, tzinfo=timezone.utc)),
        item(3, kind="managed_disk", name="data-disk-3", location="sub1/rg-data", item_id="disk:/subscriptions/s/x",
             url="/subscriptions/s/resourceGroups/rg-data/providers/Microsoft.Compute/disks/data-disk-3",
             size_bytes=1536 * 1024**2, billed_bytes=None, monthly_cost=4.0, holder=None,
             keep_command="vhd-gc keep --disk /subscriptions/s/resourceGroups/rg-data/providers/Microsoft.Compute/disks/data-disk-3"),
    )


def digest(items=None, *, key="pass-42:mail:alice@example.com", channel="mail", recipient="alice@example.com") -> Digest:
    return Digest(key=key, channel=channel, recipient=recipient, created_at=NOW,
                  items=three_items() if items is None else tuple(items))


def cfg(**data):
    return ADAPTER.validate_python(data)


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without proxy variables (either case)."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    with HttpReceiver(secret=HOOK_SECRET) as r:
        yield r


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver(users={SMTP_USER: SMTP_PASSWORD}) as r:
        yield r


def webhook(http: HttpReceiver, *, clock=lambda: 1_796_000_000.5, **over):
    c = cfg(type="webhook", url_env="HOOK_URL", secret_env="HOOK_SECRET", **over)
    return ch.make_channel("ops-hook", c, {"HOOK_URL": http.url("/vhd-gc/hook?token=querysecret"),
                                           "HOOK_SECRET": HOOK_SECRET}, clock=clock)


def slack(http: HttpReceiver, **over):
    return ch.make_channel("team-slack", cfg(type="slack", url_env="SLACK_URL", **over),
                           {"SLACK_URL": http.url(SLACK_PATH)})


def teams(http: HttpReceiver, **over):
    return ch.make_channel("team-teams", cfg(type="teams", url_env="TEAMS_URL", **over),
                           {"TEAMS_URL": http.url("/workflows/abc/triggers/manual/paths/invoke?sig=teamssecret")})


def mail(smtp: SmtpReceiver, env=None, **over):
    data = dict(type="smtp", host="127.0.0.1", port=smtp.port, **{"from": "vhd-gc@example.com"},
                username_env="SMTP_USER", password_env="SMTP_PASSWORD", ca_file=smtp.ca_file)
    data.update(over)
    env = {"SMTP_USER": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD} if env is None else env
    return ch.make_channel("mail", cfg(**data), env)


SECRETS = (HOOK_SECRET, SLACK_PATH, "T0000SECRET", "XXXXsecretXXXX", "querysecret", "teamssecret", SMTP_PASSWORD,
           "/vhd-gc/hook", "/workflows/abc")


def assert_no_secret(err: DeliveryError) -> None:
    text = str(err)
    for s in SECRETS:
        assert s not in text, (s, text)


# ---------------------------------------------------------------------------------------------------
# Configuration


def test_the_plans_channels_parse_and_dump_with_from_as_the_key():
    channels = TypeAdapter(dict[str, ch.ChannelConfig]).validate_python({
        "ops-hook": {"type": "webhook", "url": "https://hooks.example/vhd-gc", "secret_env": "VHDGC_HOOK_SECRET"},
        "team-slack": {"type": "slack", "url_env": "VHDGC_SLACK_URL"},
        "team-teams": {"type": "teams", "url_env": "VHDGC_TEAMS_URL"},
        "mail": {"type": "smtp", "host": "smtp.example.com", "port": 587, "starttls": True, "from": "vhd-gc@example.com",
                 "username_env": "VHDGC_SMTP_USER", "password_env": "VHDGC_SMTP_PASSWORD"},
    })
    assert [type(c).__name__ for c in channels.values()] == [
        "WebhookChannelConfig", "SlackChannelConfig", "TeamsChannelConfig", "SmtpChannelConfig"]
    smtp_cfg = channels["mail"]
    assert smtp_cfg.sender == "vhd-gc@example.com" and smtp_cfg.starttls and not smtp_cfg.ssl
    assert smtp_cfg.timeout == timedelta(seconds=30) and channels["team-slack"].timeout == timedelta(seconds=10)
    dumped = smtp_cfg.model_dump(mode="json", by_alias=True)
    assert dumped["from"] == "vhd-gc@example.com" and dumped["timeout"] == "30s"
    assert ch.missing_env(smtp_cfg, {"VHDGC_SMTP_USER": "u"}) == ["VHDGC_SMTP_PASSWORD"]
    assert ch.missing_env(channels["ops-hook"], {}) == ["VHDGC_HOOK_SECRET"]


@pytest.mark.parametrize("data, message", [
    ({"type": "slack"}, "exactly one of `url` and `url_env`"),
    ({"type": "slack", "url": "https://hooks.slack.com/x", "url_env": "U"}, "exactly one of `url` and `url_env`"),
    ({"type": "slack", "url": "http://hooks.slack.com/services/x"}, "must be an https URL"),
    ({"type": "teams", "url_env": "1BAD"}, "String should match pattern"),
    ({"type": "webhook", "url": "https://h.example/x"}, "Field required"),
    ({"type": "webhook", "url": "https://h.example/x", "secret_env": "S", "headers": {"X-VHDGC-Signature": "x"}},
     "is set by vhd-gc"),
    ({"type": "webhook", "url": "https://h.example/x", "secret_env": "S", "headers": {"X-A": "a\r\nB: b"}},
     "line break"),
    ({"type": "webhook", "url": "https://h.example/x", "secret_env": "S", "timeout": "0s"}, "must be positive"),
    ({"type": "smtp", "host": "h", "from": "a@b.example", "starttls": False, "username_env": "U", "password_env": "P"},
     "credentials are sent only over TLS"),
    ({"type": "smtp", "host": "h", "from": "a@b.example", "username_env": "U"}, "both `username_env` and `password_env`"),
    ({"type": "smtp", "host": "h", "from": "a@b.example", "port": "587"}, "valid integer"),
    ({"type": "smtp", "host": "h", "from": "a@b.example", "starttls": "yes"}, "valid boolean"),
    ({"type": "smtp", "host": "h", "from_": "a@b.example"}, "Field required"),
    ({"type": "smtp", "host": "h", "from": "a@b.example", "password": "x"}, "Extra inputs are not permitted"),
    ({"type": "pigeon"}, "does not match any of the expected tags"),
])
def test_a_bad_channel_is_refused_naming_why(data, message):
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python(data)
    assert message in str(info.value)


def test_every_channel_field_has_a_description():
    for model in (ch.WebhookChannelConfig, ch.SlackChannelConfig, ch.TeamsChannelConfig, ch.SmtpChannelConfig):
        assert issubclass(model, BaseModel)
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name}"


# ---------------------------------------------------------------------------------------------------
# The shared renderer


def test_sizes_costs_and_dates_read_the_same_everywhere():
    assert ch.human_bytes(128 * GiB) == "128 GiB"
    assert ch.human_bytes(1536 * 1024**2) == "1.5 GiB"
    assert ch.human_bytes(512) == "512 B"
    assert ch.money(1234.5, "EUR") == "1,234.50 EUR"
    r = ch.render_digest(digest())
    assert r.headline == "vhd-gc: 3 leftovers of yours will be deleted from 2026-12-11 (12.40 USD/month)"
    assert [i.name for i in r.items] == ["vm1-os.vhd", "data-disk-3", "vm2-os.vhd"]  # soonest first
    first, disk = r.items[0], r.items[1]
    assert (first.size, first.cost, first.delete, first.owner) == (
        "128 GiB (12 GiB billed)", "4.40 USD/month", "2026-12-11 09:30 UTC", "alice@example.com")
    assert (disk.kind, disk.size, disk.holder) == ("managed disk", "1.5 GiB", None)


def test_the_headline_of_reminders_unknown_owners_and_mixed_currencies():
    r = ch.render_digest(digest([item(1, reason="reminder", owner=None, monthly_cost=None)]))
    assert r.headline == "vhd-gc: reminder: 1 leftover will be deleted from 2026-12-11"
    assert r.items[0].owner == "unknown" and r.items[0].cost == "unpriced"
    r = ch.render_digest(digest([item(1, currency="EUR", monthly_cost=3.0), item(2, delete_after=None)]))
    assert r.headline == "vhd-gc: 2 leftovers of yours will be deleted from 2026-12-11 (3.00 EUR + 4.00 USD/month)"
    assert r.items[-1].delete == "not scheduled yet"


# ---------------------------------------------------------------------------------------------------
# The webhook


def test_the_webhook_body_is_signed_and_carries_every_item_field(http):
    d = digest()
    webhook(http).send(d)
    assert http.wait_for(1)
    req = http.requests[0]
    assert req.signature_ok is True  # the receiver's own HMAC check
    ts = req.headers["x-vhdgc-timestamp"]
    assert ts == "1796000000"
    expected = hmac.new(HOOK_SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-vhdgc-signature"] == f"sha256={expected}"
    assert req.headers["idempotency-key"] == d.key
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    assert req.path == "/vhd-gc/hook?token=querysecret"
    body = req.json()
    assert {k: body[k] for k in ("version", "key", "channel", "recipient", "created_at")} == {
        "version": 1, "key": d.key, "channel": "mail", "recipient": "alice@example.com",
        "created_at": "2026-12-04T05:00:00Z"}
    assert [set(i) for i in body["items"]] == [{f.name for f in dataclasses.fields(NoticeItem)}] * 3
    first = body["items"][0]
    assert first == {**dataclasses.asdict(d.items[0]), "delete_after": "2026-12-11T09:30:00Z"}
    assert body["items"][2]["billed_bytes"] is None and body["items"][2]["holder"] is None
    assert req.body == ch.webhook_body(d)


def test_a_cost_that_is_not_a_number_is_null_and_unpriced(http):
    d = digest([item(1, monthly_cost=float("nan")), item(2, monthly_cost=float("inf"))])
    webhook(http).send(d)
    assert [i["monthly_cost"] for i in http.requests[0].json()["items"]] == [None, None]
    assert {i.cost for i in ch.render_digest(d).items} == {"unpriced"}
    assert ch.render_digest(d).headline == "vhd-gc: 2 leftovers of yours will be deleted from 2026-12-11"


def test_a_receiver_with_another_secret_refuses_the_signature():
    with HttpReceiver(secret="another-secret") as other:
        webhook(other).send(digest())
        assert other.requests[0].signature_ok is False


def test_a_resent_digest_repeats_its_idempotency_key_and_body(http):
    ticks = iter([1_796_000_000, 1_796_000_060])
    channel = webhook(http, clock=lambda: next(ticks))
    d = digest()
    channel.send(d)
    channel.send(d)
    a, b = http.requests
    assert a.headers["idempotency-key"] == b.headers["idempotency-key"] == d.key
    assert a.body == b.body and a.headers["x-vhdgc-timestamp"] != b.headers["x-vhdgc-timestamp"]
    assert a.signature_ok and b.signature_ok


def test_extra_headers_are_sent_but_cannot_replace_vhdgcs(http):
    webhook(http, headers={"X-Tenant": "finops"}).send(digest())
    assert http.requests[0].headers["x-tenant"] == "finops"


def test_the_webhook_over_https_trusts_its_ca_file_and_nothing_else():
    with HttpReceiver(secret=HOOK_SECRET, tls=True) as tls:
        webhook(tls, ca_file=tls.ca_file).send(digest())
        assert tls.requests[0].signature_ok is True
        with pytest.raises(DeliveryError) as info:
            webhook(tls).send(digest())  # the system's CAs do not know the self-signed certificate
        assert info.value.permanent and "TLS certificate not trusted" in str(info.value)
        assert len(tls.requests) == 1
        assert_no_secret(info.value)


def test_the_webhook_goes_through_the_proxy_the_environment_names(monkeypatch):
    proxy = ForwardProxy()
    try:
        with HttpReceiver(secret=HOOK_SECRET, tls=True) as tls:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            webhook(tls, ca_file=tls.ca_file).send(digest())
            assert proxy.connects == [f"127.0.0.1:{tls.port}"]  # a CONNECT tunnel: TLS end to end
            assert tls.requests[0].signature_ok is True
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            webhook(tls, ca_file=tls.ca_file).send(digest())
            assert len(proxy.connects) == 1 and len(tls.requests) == 2
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------------------
# Slack: https://api.slack.com/messaging/webhooks takes {"text": ..., "blocks": [...]}; Block Kit
# (https://api.slack.com/reference/block-kit/blocks): a header block {"type": "header", "text":
# {"type": "plain_text", "text": ...}} (at most 150 characters), section blocks {"type": "section", "text":
# {"type": "mrkdwn", "text": ...}} (at most 3,000), context blocks {"type": "context", "elements": [...]},
# at most 50 blocks a message.


def test_slack_gets_a_header_and_one_section_per_item(http):
    slack(http).send(digest())
    req = http.requests[0]
    assert req.path == SLACK_PATH and "x-vhdgc-signature" not in req.headers
    body = req.json()
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "vhd-gc: 3 leftovers of yours will be deleted from 2026-12-11 (12.40 USD/month)"
    header, intro, *sections = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": body["text"]}}
    assert intro["type"] == "section" and intro["text"]["type"] == "mrkdwn"
    assert len(sections) == 3 and all(s["type"] == "section" and s["text"]["type"] == "mrkdwn" for s in sections)
    first = sections[0]["text"]["text"]
    for part in ("`vm1-os.vhd`", "`gcacct1/vhds`", "128 GiB (12 GiB billed)", "4.40 USD/month",
                 "2026-12-11 09:30 UTC", "alice@example.com", "`vm1`",
                 "`vhd-gc keep gcacct1/vhds/vm1-os.vhd --reason 'still needed'`"):
        assert part in first, part


def test_slack_stays_under_its_limits_and_counts_the_rest(http):
    many = [item(i, name=f"{'x' * 900}-{i}.vhd", keep_command=f"vhd-gc keep gcacct1/vhds/{'x' * 900}-{i}.vhd")
            for i in range(120)]
    slack(http).send(digest(many))
    blocks = http.requests[0].json()["blocks"]
    assert len(blocks) <= ch.SLACK_MAX_BLOCKS
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    assert len(blocks[0]["text"]["text"]) <= 150
    shown = [b for b in blocks[2:] if b["type"] == "section"]
    more = blocks[-1]
    assert more["type"] == "context"
    assert more["elements"][0]["text"].startswith(f"...and {120 - len(shown)} more (")
    assert all("vhd-gc keep gcacct1/vhds/" in b["text"]["text"] for b in shown)
    assert sum(len(b["text"]["text"]) for b in shown) <= ch.SLACK_MAX_BLOCKS_TEXT

    http.requests.clear()
    short = [item(i, name=f"d{i}", location="a/b", holder=None, keep_command=f"vhd-gc keep a/b/d{i}") for i in range(60)]
    slack(http).send(digest(short))  # short items: the 50 blocks bind
    blocks = http.requests[0].json()["blocks"]
    assert len(blocks) == 50 and blocks[-1]["elements"][0]["text"].startswith("...and 13 more (52.00 USD/month)")


def test_slack_text_is_escaped(http):
    slack(http).send(digest([item(1, name="a<b>&c.vhd", owner="<!channel>")]))
    text = http.requests[0].json()["blocks"][2]["text"]["text"]
    assert "`a&lt;b&gt;&amp;c.vhd`" in text and "&lt;!channel&gt;" in text and "<!channel>" not in text


# ---------------------------------------------------------------------------------------------------
# Teams: "Send Adaptive Cards using an incoming webhook"
# (https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using):
# {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
#  "contentUrl": null, "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
#  "type": "AdaptiveCard", "version": "1.2", "body": [...]}}]}; "The message size limit is 28 KB"
# (https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook).


def test_teams_gets_an_adaptive_card_in_a_message(http):
    teams(http).send(digest())
    body = http.requests[0].json()
    assert body["type"] == "message" and len(body["attachments"]) == 1
    att = body["attachments"][0]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive" and att["contentUrl"] is None
    card = att["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.2"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    title, intro, *containers = card["body"]
    assert title["type"] == "TextBlock" and title["text"].startswith("vhd-gc: 3 leftovers of yours")
    assert [c["type"] for c in containers] == ["Container"] * 3
    first = containers[0]["items"]
    assert first[0]["text"] == "VHD: vm1-os.vhd"
    facts = {f["title"]: f["value"] for f in first[1]["facts"]}
    assert facts == {"Where": "gcacct1/vhds", "Size": "128 GiB (12 GiB billed)", "Cost": "4.40 USD/month",
                     "Deleted from": "2026-12-11 09:30 UTC", "Owner": "alice@example.com", "Last held by": "vm1"}
    assert first[-1] == {"type": "TextBlock", "text": "vhd-gc keep gcacct1/vhds/vm1-os.vhd --reason 'still needed'",
                         "fontType": "Monospace", "wrap": True}


def test_teams_stays_under_28_kb_and_counts_the_rest(http):
    teams(http).send(digest([item(i) for i in range(300)]))
    req = http.requests[0]
    assert len(req.body) <= ch.TEAMS_MAX_BYTES < 28 * 1000
    body = req.json()["attachments"][0]["content"]["body"]
    shown = sum(1 for b in body if b["type"] == "Container")
    assert 10 < shown < 300
    assert body[-1]["text"].startswith(f"...and {300 - shown} more (")


def test_a_throttled_legacy_teams_connector_is_a_transient_failure(http):
    http.ok(b"Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0,server=msgapi")
    with pytest.raises(DeliveryError) as info:
        teams(http).send(digest())
    assert not info.value.permanent and "throttled" in str(info.value)
    assert_no_secret(info.value)
    http.ok(b"1")
    teams(http).send(digest())


# ---------------------------------------------------------------------------------------------------
# Email


def test_the_email_goes_over_starttls_with_auth_after_it(smtp):
    d = digest()
    mail(smtp).send(d)
    assert smtp.wait_for(1)
    m = smtp.messages[0]
    assert (m.mail_from, m.rcpt_tos, m.tls, m.login) == ("vhd-gc@example.com", ["alice@example.com"], True, SMTP_USER)
    steps = [(e.what, e.tls) for e in smtp.events]
    assert steps == [("ehlo", False), ("starttls", True), ("ehlo", True), ("auth", True), ("mail", True),
                     ("rcpt", True), ("data", True)]
    assert smtp.auth_attempts == [(SMTP_USER, True, True)]
    msg = m.message
    assert msg["Subject"] == "vhd-gc: 3 leftovers of yours will be deleted from 2026-12-11 (12.40 USD/month)"
    assert msg["Message-ID"] == ch.message_id(d.key, "vhd-gc@example.com")
    assert msg["Message-ID"].startswith("<vhdgc.") and msg["Message-ID"].endswith("@example.com>")
    assert (msg["From"], msg["To"], msg["Auto-Submitted"]) == ("vhd-gc@example.com", "alice@example.com", "auto-generated")
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    page = msg.get_body(("html",)).get_content()
    for cmd in (i.keep_command for i in d.items):
        assert cmd in text
        assert cmd.replace("'", "&#x27;") in page
    assert "128 GiB (12 GiB billed)" in text and "2026-12-11 09:30 UTC" in text and "4.40 USD/month" in text
    assert "<code>vhd-gc keep --disk /subscriptions/s/resourceGroups/rg-data" in page


def test_a_resent_email_carries_the_same_message_id(smtp):
    channel = mail(smtp)
    channel.send(digest())
    channel.send(digest())
    channel.send(digest(key="pass-43:mail:alice@example.com"))
    ids = [m.message["Message-ID"] for m in smtp.messages]
    assert ids[0] == ids[1] != ids[2]


def test_no_credentials_go_to_a_relay_without_starttls():
    with SmtpReceiver(starttls=False) as plain:
        with pytest.raises(DeliveryError) as info:
            mail(plain).send(digest())
        assert info.value.permanent and "does not offer STARTTLS" in str(info.value)
        assert [e.what for e in plain.events] == ["ehlo"] and plain.auth_attempts == [] and plain.messages == []
        assert_no_secret(info.value)
        # a local relay without TLS and without credentials is allowed when asked for
        mail(plain, env={}, starttls=False, username_env=None, password_env=None).send(digest())
        assert plain.messages[0].tls is False and plain.messages[0].login is None


# aiosmtpd warns because, seeing no STARTTLS, it is told not to require TLS for AUTH: the connection is TLS
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_sends_credentials_from_the_first_byte_on():
    with SmtpReceiver(implicit_tls=True, users={SMTP_USER: SMTP_PASSWORD}) as tls:
        mail(tls, ssl=True).send(digest())
        assert [(e.what, e.tls) for e in tls.events][:2] == [("ehlo", True), ("auth", True)]
        assert tls.messages[0].login == SMTP_USER


def test_the_receivers_summaries_name_what_arrived(http, smtp):
    webhook(http).send(digest())
    assert "signature verified" in http.requests[0].summary()
    assert "vhd-gc keep gcacct1/vhds/vm1-os.vhd" in http.requests[0].summary()
    mail(smtp).send(digest())
    text = smtp.messages[0].summary()
    assert "Subject: vhd-gc: 3 leftovers" in text and "over TLS" in text and "vhd-gc keep --disk" in text


# ---------------------------------------------------------------------------------------------------
# Faults


@pytest.mark.parametrize("status, permanent", [
    (500, False), (502, False), (503, False), (408, False), (429, False),
    (400, True), (403, True), (404, True), (410, True), (301, True),
])
@pytest.mark.parametrize("make", [webhook, slack, teams], ids=["webhook", "slack", "teams"])
def test_an_http_status_is_transient_or_permanent(http, make, status, permanent):
    http.fail_with(status, b"invalid_payload" if status == 400 else b"")
    with pytest.raises(DeliveryError) as info:
        make(http).send(digest())
    assert info.value.permanent is permanent
    assert f"HTTP {status}" in str(info.value)
    assert str(info.value).startswith(("ops-hook (webhook): POST to http://127.0.0.1:", "team-slack (slack): POST to",
                                       "team-teams (teams): POST to"))
    assert_no_secret(info.value)
    assert len(http.requests) == 1  # no retry inside the channel


@pytest.mark.parametrize("make", [webhook, slack, teams], ids=["webhook", "slack", "teams"])
def test_a_refused_connection_is_transient(http, make):
    channel = make(http)
    http.refuse()
    with pytest.raises(DeliveryError) as info:
        channel.send(digest())
    assert not info.value.permanent and "connection refused" in str(info.value)
    assert_no_secret(info.value)
    http.accept()
    channel.send(digest())
    assert len(http.requests) == 1


@pytest.mark.parametrize("make", [webhook, slack, teams], ids=["webhook", "slack", "teams"])
def test_a_slow_receiver_is_a_transient_timeout(http, make):
    http.hold()
    with pytest.raises(DeliveryError) as info:
        make(http, timeout=timedelta(seconds=1)).send(digest())
    assert not info.value.permanent and "timed out" in str(info.value)
    assert_no_secret(info.value)
    assert http.wait_for(1)  # it got there: the outbox's retry repeats the idempotency key
    http.release()


def test_a_missing_secret_or_url_is_permanent_and_names_the_variable(http):
    c = cfg(type="webhook", url_env="HOOK_URL", secret_env="HOOK_SECRET")
    for env, name in (({"HOOK_SECRET": HOOK_SECRET}, "HOOK_URL"), ({"HOOK_URL": http.url()}, "HOOK_SECRET")):
        with pytest.raises(DeliveryError) as info:
            ch.make_channel("ops-hook", c, env).send(digest())
        assert info.value.permanent and f"environment variable {name}" in str(info.value)
    bad = {"HOOK_URL": f"ftp://127.0.0.1:{http.port}{SLACK_PATH}", "HOOK_SECRET": HOOK_SECRET}
    with pytest.raises(DeliveryError) as info:
        ch.make_channel("ops-hook", c, bad).send(digest())
    assert info.value.permanent and "must be an https URL" in str(info.value)
    assert_no_secret(info.value)
    with pytest.raises(DeliveryError) as info:
        mail_cfg = cfg(type="smtp", host="127.0.0.1", **{"from": "a@example.com"}, starttls=False)
        ch.make_channel("mail", mail_cfg, {}).send(digest(recipient="not an address"))
    assert info.value.permanent and "not an email address" in str(info.value)
    assert http.requests == []


def test_an_endpoint_is_shown_without_its_path(http):
    assert slack(http).endpoint == f"http://127.0.0.1:{http.port}"
    assert ch.make_channel("s", cfg(type="slack", url_env="NOPE"), {}).endpoint == "$NOPE"


def test_a_refused_smtp_connection_is_transient(smtp):
    channel = mail(smtp)
    with closed_port() as closed:
        with pytest.raises(DeliveryError) as info:
            mail(smtp, port=closed.port).send(digest())
    assert not info.value.permanent and "connection refused" in str(info.value)
    smtp.refuse()
    with pytest.raises(DeliveryError) as info:
        channel.send(digest())
    assert not info.value.permanent and "connection refused" in str(info.value)
    smtp.accept()
    channel.send(digest())
    assert len(smtp.messages) == 1


def test_a_slow_relay_is_a_transient_timeout(smtp):
    smtp.hold()
    with pytest.raises(DeliveryError) as info:
        mail(smtp, timeout=timedelta(seconds=1)).send(digest())
    assert not info.value.permanent and "timed out" in str(info.value)
    assert_no_secret(info.value)
    smtp.release()


@pytest.mark.parametrize("where, reply, permanent", [
    ("data", "451 4.3.0 Try again later", False),
    ("data", "552 5.3.4 Message too big", True),
    ("rcpt", "450 4.2.1 Mailbox busy", False),
    ("rcpt", "550 5.1.1 No such user", True),
])
def test_an_smtp_reply_is_transient_or_permanent(smtp, where, reply, permanent):
    setattr(smtp, f"reply_{where}", reply)
    with pytest.raises(DeliveryError) as info:
        mail(smtp).send(digest())
    assert info.value.permanent is permanent
    assert reply in str(info.value)
    assert_no_secret(info.value)
    assert smtp.messages == []


def test_wrong_smtp_credentials_are_permanent_and_not_shown(smtp):
    with pytest.raises(DeliveryError) as info:
        mail(smtp, env={"SMTP_USER": SMTP_USER, "SMTP_PASSWORD": "wrong-" + SMTP_PASSWORD}).send(digest())
    assert info.value.permanent and "535" in str(info.value)
    assert_no_secret(info.value)
    assert "wrong-" not in str(info.value) and SMTP_USER not in str(info.value)
    # smtplib tries each mechanism the relay offers (PLAIN, then LOGIN): every try over TLS, none taken
    assert smtp.auth_attempts and set(smtp.auth_attempts) == {(SMTP_USER, True, False)} and smtp.messages == []


def test_an_untrusted_smtp_certificate_is_permanent_and_sends_nothing(smtp):
    with pytest.raises(DeliveryError) as info:
        mail(smtp, ca_file=None).send(digest())
    assert info.value.permanent and "TLS certificate not trusted" in str(info.value)
    assert smtp.auth_attempts == [] and smtp.messages == []
