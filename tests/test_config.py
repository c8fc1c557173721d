"""The configuration file: durations, defaults, refusals that name the key, loading, redaction."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from gc_daemon.config import (
    ENV_CONFIG,
    Config,
    ConfigError,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    redacted,
)
from gc_daemon.decide import classify, decide_blob
from gc_daemon.domain import Policy
from tests.builders import NOW, index, seen

SUB = "00000000-0000-0000-0000-000000000001"


def minimal(**top) -> dict:
    """The smallest valid file: one subscription, one storage account; everything else defaulted."""
    data = {"azure": {"subscriptions": [SUB], "storage_accounts": [{"name": "gcacct1"}]}}
    data.update(top)
    return data


def with_azure(**azure) -> dict:
    data = minimal()
    data["azure"].update(azure)
    return data


def emulator(arm="http://127.0.0.1:8443", accounts=None) -> dict:
    return with_azure(
        credential="emulator",
        arm_endpoint=arm,
        storage_accounts=accounts if accounts is not None else [{"name": "gcacct1", "blob_endpoint": "http://127.0.0.1:10000/gcacct1"}],
    )


def refusal(data) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("0s", timedelta(0)),
        ("3600", timedelta(hours=1)),
        (3600, timedelta(hours=1)),
        (0, timedelta(0)),
    ],
)
def test_duration_is_an_integer_with_a_unit_or_bare_seconds(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["7w", "-1", -1, "1.5h", 1.5, True, False, "true", "", "h", "7 days", "7D", None, [7]])
def test_duration_refuses_anything_else(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("td, text", [(timedelta(days=7), "7d"), (timedelta(hours=36), "36h"), (timedelta(seconds=90), "90s"), (timedelta(0), "0s")])
def test_format_duration_renders_the_largest_exact_unit(td, text):
    assert format_duration(td) == text
    assert parse_duration(text) == td


@pytest.mark.parametrize("key", ["grace_period", "min_age", "import_hold"])
def test_zero_is_a_valid_duration_for_grace_min_age_and_import_hold(key):
    assert getattr(parse_config(minimal(**{key: "0s"})), key) == timedelta(0)


@pytest.mark.parametrize("key", ["grace_period", "min_age", "import_hold", "interval"])
def test_bad_duration_is_refused_naming_the_key(key):
    assert key in refusal(minimal(**{key: "7w"}))


def test_zero_interval_is_refused():
    assert "interval" in refusal(minimal(interval="0s"))


def test_absurdly_long_duration_is_refused_as_configuration_error():
    assert "grace_period" in refusal(minimal(grace_period="99999999999d"))


def test_grace_period_beyond_the_calendar_is_refused():
    try:
        cfg = parse_config(minimal(grace_period="3000000d"))
    except ConfigError as err:
        assert "grace_period" in str(err)
        return
    pol = cfg.policy_rules
    blob = seen()
    c = classify(blob, index(), {}, pol, NOW)
    decide_blob(blob, None, c, pol, NOW, 1)  # OverflowError: date value out of range


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_are_the_contracts_example_values():
    cfg = parse_config(minimal())
    assert cfg.database_url == "sqlite:///vhd-gc.db"
    assert cfg.mode == "dry-run"
    assert cfg.grace_period == timedelta(days=7)
    assert cfg.min_sightings == 3
    assert cfg.min_age == timedelta(hours=24)
    assert cfg.import_hold == timedelta(days=7)
    assert cfg.interval == timedelta(hours=1)
    assert cfg.max_deletes_per_pass == 100
    assert cfg.metrics_listen == "127.0.0.1:9465"
    assert cfg.azure.credential == "default"
    assert cfg.azure.arm_endpoint == "https://management.azure.com"
    assert cfg.azure.subscriptions == [SUB]
    assert cfg.azure.storage_accounts[0].endpoint == "https://gcacct1.blob.core.windows.net"
    assert cfg.azure.storage_accounts[0].key_env is None


def test_long_running_operations_are_waited_for_and_polled_as_configured():
    cfg = parse_config(minimal())
    assert (cfg.azure.lro_timeout, cfg.azure.lro_poll_interval) == (timedelta(minutes=30), timedelta(seconds=5))
    cfg = parse_config(with_azure(lro_timeout="2h", lro_poll_interval="10s"))
    assert (cfg.azure.lro_timeout, cfg.azure.lro_poll_interval) == (timedelta(hours=2), timedelta(seconds=10))
    assert "azure.lro_poll_interval" in refusal(with_azure(lro_poll_interval="0s"))
    assert "azure.lro_timeout" in refusal(with_azure(lro_timeout="0s"))


def test_policy_rules_carry_the_configured_values():
    cfg = parse_config(
        minimal(grace_period="2d", min_sightings=5, min_age="1h", import_hold="0s", policy={"delete_block_blob_vhds": True})
    )
    assert cfg.policy_rules == Policy(
        min_age=timedelta(hours=1),
        grace_period=timedelta(days=2),
        min_sightings=5,
        import_hold=timedelta(0),
        delete_block_blob_vhds=True,
        delete_non_vhd_page_blobs=False,
    )


def test_full_contract_example_is_accepted():
    cfg = parse_config(
        {
            "database_url": "postgresql+psycopg://gc@db/vhdgc",
            "mode": "delete",
            "grace_period": "7d",
            "min_sightings": 3,
            "min_age": "24h",
            "import_hold": "7d",
            "interval": "1h",
            "max_deletes_per_pass": 100,
            "metrics_listen": "127.0.0.1:9465",
            "azure": {
                "credential": "default",
                "arm_endpoint": "https://management.azure.com",
                "subscriptions": [SUB],
                "storage_accounts": [{"name": "gcacct1", "blob_endpoint": "http://127.0.0.1:10000/gcacct1", "key_env": "GCACCT1_KEY"}],
            },
        }
    )
    assert cfg.mode == "delete"
    assert cfg.azure.storage_accounts[0].endpoint == "http://127.0.0.1:10000/gcacct1"
    assert cfg.listen_address == ("127.0.0.1", 9465)


def test_empty_file_is_refused_naming_the_missing_azure_key():
    assert "azure" in refusal(None)


def test_non_mapping_file_is_refused():
    assert "mapping" in refusal(["a", "b"])


# --- refusals that name the key ------------------------------------------------------------------


def test_unknown_top_level_key_is_refused_by_name():
    msg = refusal(minimal(grace_periode="7d"))
    assert "grace_periode" in msg and "unknown key" in msg


def test_unknown_nested_key_is_refused_by_its_path():
    data = minimal()
    data["azure"]["storage_accounts"][0]["account_key"] = "secret"
    msg = refusal(data)
    assert "azure.storage_accounts[0].account_key" in msg and "unknown key" in msg
    assert "secret" not in msg


def test_unknown_key_under_azure_is_refused_by_its_path():
    assert "azure.tenant" in refusal(with_azure(tenant="x"))


@pytest.mark.parametrize(
    "data, key",
    [
        (minimal(min_sightings="three"), "min_sightings"),
        (minimal(max_deletes_per_pass="many"), "max_deletes_per_pass"),
        (minimal(mode="destroy"), "mode"),
        (minimal(grace_period=True), "grace_period"),
        (minimal(grace_period=[1]), "grace_period"),
        (with_azure(subscriptions=SUB), "azure.subscriptions"),
        (with_azure(subscriptions=["not-a-guid"]), "azure.subscriptions[0]"),
        (with_azure(subscriptions=[]), "azure.subscriptions"),
        (with_azure(storage_accounts={"name": "gcacct1"}), "azure.storage_accounts"),
        (with_azure(storage_accounts=[]), "azure.storage_accounts"),
        (with_azure(storage_accounts=[{"name": "GC_ACCT"}]), "azure.storage_accounts[0].name"),
        (with_azure(storage_accounts=[{"name": "gcacct1", "blob_endpoint": "ftp://x"}]), "azure.storage_accounts[0].blob_endpoint"),
        (with_azure(storage_accounts=[{"name": "gcacct1", "key_env": "1BAD-NAME"}]), "azure.storage_accounts[0].key_env"),
        (with_azure(credential="password"), "azure.credential"),
        (with_azure(arm_endpoint="management.azure.com"), "azure.arm_endpoint"),
        (minimal(metrics_listen="9465"), "metrics_listen"),
        (minimal(metrics_listen="127.0.0.1:70000"), "metrics_listen"),
        (minimal(policy={"delete_everything": True}), "policy.delete_everything"),
        (minimal(min_sightings=0), "min_sightings"),
        (minimal(max_deletes_per_pass=-1), "max_deletes_per_pass"),
    ],
)
def test_wrong_type_or_impossible_value_is_refused_naming_the_key(data, key):
    assert key in refusal(data)


def test_missing_subscriptions_is_refused_naming_the_key():
    data = minimal()
    del data["azure"]["subscriptions"]
    assert "azure.subscriptions" in refusal(data)


def test_boolean_min_sightings_is_refused():
    assert "min_sightings" in refusal(minimal(min_sightings=True))


def test_boolean_max_deletes_per_pass_is_refused():
    assert "max_deletes_per_pass" in refusal(minimal(max_deletes_per_pass=True))


def test_string_policy_opt_in_is_refused():
    assert "policy.delete_block_blob_vhds" in refusal(minimal(policy={"delete_block_blob_vhds": "yes"}))


def test_duplicate_account_names_are_refused():
    msg = refusal(with_azure(storage_accounts=[{"name": "gcacct1"}, {"name": "gcacct2"}, {"name": "gcacct1"}]))
    assert "azure.storage_accounts" in msg and "gcacct1" in msg


@pytest.mark.parametrize("url", ["not a url", "mysql://u@h/db", "", "sqlite"])
def test_bad_database_url_is_refused(url):
    assert "database_url" in refusal(minimal(database_url=url))


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:////var/lib/vhd-gc/state.db", "postgresql+psycopg://gc:pw@db:5432/vhdgc"])
def test_sqlite_and_postgresql_urls_are_accepted(url):
    assert parse_config(minimal(database_url=url)).database_url == url


def test_subscriptions_are_lower_cased_and_deduplicated():
    upper = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"
    cfg = parse_config(with_azure(subscriptions=[upper, upper.lower()]))
    assert cfg.azure.subscriptions == [upper.lower()]


# --- the emulator credential ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "arm, blob",
    [
        ("http://127.0.0.1:8443", "http://127.0.0.1:10000/gcacct1"),
        ("https://localhost:8443", "http://localhost:10000/gcacct1"),
        ("http://[::1]:8443", "http://[::1]:10000/gcacct1"),
    ],
)
def test_emulator_credential_is_accepted_on_loopback(arm, blob):
    cfg = parse_config(emulator(arm, [{"name": "gcacct1", "blob_endpoint": blob}]))
    assert cfg.azure.credential == "emulator"


def test_emulator_credential_is_refused_with_non_loopback_arm_endpoint():
    msg = refusal(emulator(arm="https://management.azure.com"))
    assert "azure.arm_endpoint" in msg and "emulator" in msg


def test_emulator_credential_is_refused_with_the_default_arm_endpoint():
    data = emulator()
    del data["azure"]["arm_endpoint"]
    assert "azure.arm_endpoint" in refusal(data)


def test_emulator_credential_is_refused_when_an_account_endpoint_defaults_to_azure():
    msg = refusal(emulator(accounts=[{"name": "gcacct1", "blob_endpoint": "http://127.0.0.1:10000/gcacct1"}, {"name": "gcacct2"}]))
    assert "azure.storage_accounts[1].blob_endpoint" in msg and "gcacct2.blob.core.windows.net" in msg


@pytest.mark.parametrize("endpoint", ["https://gcacct1.blob.core.windows.net", "http://10.0.0.5:10000/gcacct1", "http://localhost.example.com/gcacct1"])
def test_emulator_credential_is_refused_with_a_non_loopback_blob_endpoint(endpoint):
    assert "azure.storage_accounts[0].blob_endpoint" in refusal(emulator(accounts=[{"name": "gcacct1", "blob_endpoint": endpoint}]))


def test_non_emulator_credential_may_talk_to_anything():
    data = with_azure(credential="managed_identity", storage_accounts=[{"name": "gcacct1"}])
    assert parse_config(data).azure.credential == "managed_identity"


# --- loading -------------------------------------------------------------------------------------

YAML = f"""
database_url: sqlite:///state.db
mode: delete
grace_period: 2d
azure:
  subscriptions: [{SUB}]
  storage_accounts:
    - name: gcacct1
      key_env: GCACCT1_KEY
"""


def test_load_config_reads_a_yaml_file(tmp_path):
    path = tmp_path / "vhd-gc.yaml"
    path.write_text(YAML)
    cfg = load_config(path)
    assert (cfg.database_url, cfg.mode, cfg.grace_period) == ("sqlite:///state.db", "delete", timedelta(days=2))


def test_load_config_falls_back_to_the_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "from-env.yaml"
    path.write_text(YAML)
    monkeypatch.setenv(ENV_CONFIG, str(path))
    assert load_config(None).grace_period == timedelta(days=2)


def test_explicit_path_wins_over_the_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "explicit.yaml"
    path.write_text(YAML.replace("2d", "3d"))
    monkeypatch.setenv(ENV_CONFIG, str(tmp_path / "does-not-exist.yaml"))
    assert load_config(str(path)).grace_period == timedelta(days=3)


def test_load_config_without_path_or_environment_variable_is_refused(monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    with pytest.raises(ConfigError, match=ENV_CONFIG):
        load_config(None)


def test_load_config_refuses_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


def test_load_config_refuses_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("azure: [unclosed\n  - : :\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_load_config_refuses_an_unknown_key_in_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(YAML + "grace_peroid: 1d\n")
    with pytest.raises(ConfigError, match="grace_peroid"):
        load_config(path)


# --- redaction -----------------------------------------------------------------------------------


def test_redacted_hides_the_database_password():
    cfg = parse_config(minimal(database_url="postgresql+psycopg://gc:s3cr3t-pw@db:5432/vhdgc"))
    out = redacted(cfg)
    assert "s3cr3t-pw" not in json.dumps(out)
    assert out["database_url"].startswith("postgresql+psycopg://gc:")
    assert "db:5432/vhdgc" in out["database_url"]


def test_redacted_hides_a_database_password_given_as_a_query_parameter():
    cfg = parse_config(minimal(database_url="postgresql+psycopg://gc@db/vhdgc?password=s3cr3t-pw"))
    assert "s3cr3t-pw" not in json.dumps(redacted(cfg))


def test_redacted_never_contains_the_account_key(monkeypatch):
    secret = "c2VjcmV0LWFjY291bnQta2V5LXZhbHVlPT0="
    monkeypatch.setenv("GCACCT1_KEY", secret)
    cfg = parse_config(with_azure(storage_accounts=[{"name": "gcacct1", "key_env": "GCACCT1_KEY"}]))
    out = redacted(cfg)
    text = json.dumps(out)
    assert secret not in text
    acct = out["azure"]["storage_accounts"][0]
    assert acct["key_env"] == "GCACCT1_KEY" and acct["key"] == "<redacted: set>"


def test_redacted_says_when_the_key_env_var_is_not_set(monkeypatch):
    monkeypatch.delenv("GCACCT9_KEY", raising=False)
    cfg = parse_config(with_azure(storage_accounts=[{"name": "gcacct1", "key_env": "GCACCT9_KEY"}]))
    assert redacted(cfg)["azure"]["storage_accounts"][0]["key"] == "<redacted: NOT SET>"


def test_redacted_shows_effective_values_and_round_trips():
    cfg = parse_config(minimal(grace_period="36h"))
    out = redacted(cfg)
    assert out["grace_period"] == "36h" and out["min_age"] == "1d" and out["interval"] == "1h"
    assert out["azure"]["storage_accounts"][0]["blob_endpoint"] == "https://gcacct1.blob.core.windows.net"
    assert out["database_url"] == "sqlite:///vhd-gc.db"
    # The printed configuration is itself a valid configuration file with the same effect.
    again = parse_config(copy.deepcopy(out))
    assert redacted(again) == out
    assert again.policy_rules == cfg.policy_rules


def test_config_is_frozen():
    cfg = parse_config(minimal())
    with pytest.raises(Exception):
        cfg.mode = "delete"  # type: ignore[misc]
    assert isinstance(cfg, Config)


# --- reading the file strictly (the CLI's view: tests/test_hardening.py) ---------------------------


def test_load_config_refuses_a_duplicate_key_naming_its_path_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(YAML.replace("    - name: gcacct1\n", "    - name: gcacct1\n      name: gcacct2\n"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"--config: {path}: duplicate key azure.storage_accounts[0].name at line 9 (first at line 8): a key may appear only once"
    )


def test_load_config_lets_a_key_override_what_a_merge_brings_in(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(YAML.replace("      key_env: GCACCT1_KEY\n", "      key_env: GCACCT1_KEY\n    - <<: *a1\n      name: gcacct2\n")
                    .replace("    - name: gcacct1\n", "    - &a1\n      name: gcacct1\n"))
    cfg = load_config(path)
    assert [(a.name, a.key_env) for a in cfg.azure.storage_accounts] == [("gcacct1", "GCACCT1_KEY"), ("gcacct2", "GCACCT1_KEY")]


def test_load_config_never_quotes_the_line_of_a_yaml_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("azure: {subscriptions: [x\n  blob_endpoint: 'https://u:S3cr3tPw@h/?sig=S3cr3tSig'\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert "S3cr3t" not in str(err.value) and "\n" not in str(err.value)


# --- the storage listing's guards: the service's clock, endless listings ---------------------------


def test_max_clock_skew_and_max_list_pages_default_and_parse():
    cfg = parse_config(minimal())
    assert (cfg.azure.max_clock_skew, cfg.azure.max_list_pages) == (timedelta(minutes=5), 10_000)
    cfg = parse_config(with_azure(max_clock_skew="90s", max_list_pages=1))
    assert (cfg.azure.max_clock_skew, cfg.azure.max_list_pages) == (timedelta(seconds=90), 1)
    out = redacted(cfg)["azure"]
    assert (out["max_clock_skew"], out["max_list_pages"]) == ("90s", 1)


@pytest.mark.parametrize(
    "azure, key",
    [
        ({"max_clock_skew": "0s"}, "azure.max_clock_skew"),
        ({"max_clock_skew": "soon"}, "azure.max_clock_skew"),
        ({"max_list_pages": 0}, "azure.max_list_pages"),
        ({"max_list_pages": "many"}, "azure.max_list_pages"),
    ],
)
def test_bad_max_clock_skew_or_max_list_pages_is_refused_naming_the_key(azure, key):
    assert refusal(with_azure(**azure)).startswith(f"{key}:")
