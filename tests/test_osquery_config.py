"""The osquery_config package: state files, validation, targeting, composition, diffs, rollout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from osquery_config.composition import compose, config_hash, osquery_info_hash
from osquery_config.diff import diff_states
from osquery_config.rollout import gets_candidate, nodes_for_count, rollout_bucket
from osquery_config.state import (
    DEFAULT_STATE,
    Block,
    InvalidState,
    Label,
    State,
    Targets,
    read_state_files,
)
from osquery_config.targeting import (
    NodeFacts,
    NodeGroup,
    Selection,
    block_applies,
    group_of,
    node_tags_for,
    platform_family,
    platform_matches,
    platform_selected,
)
from osquery_config.validation import (
    MAX_CONFIG_BYTES,
    check_rendered,
    parse_config_json,
    validate_state,
)
from protos.v1 import config_pb2

RESERVED_NAME_RULE = (
    "is reserved by osquery (names may not start with 'query.', 'cache.' or 'config_views.',"
    " nor end with 'epoch' or 'counter')"
)
UPTIME = {"query": "SELECT * FROM uptime", "interval": 3600}


def block(name: str, config: dict, **targets: object) -> Block:
    targets = targets or {"all": True}
    return Block(
        name, Targets(**{k: tuple(v) if k != "all" else v for k, v in targets.items()}), config
    )


def state_of(
    *blocks: Block, labels: tuple[Label, ...] = (), node_tags: dict | None = None
) -> State:
    return State(blocks=blocks, labels=labels, node_tags=node_tags or {})


def linux(tags: tuple[str, ...] = (), labels: tuple[str, ...] = (), node_id: str = "") -> NodeGroup:
    return NodeGroup("linux", frozenset(tags), frozenset(labels), node_id)


def refusal(state: State) -> str:
    with pytest.raises(InvalidState) as caught:
        validate_state(state)
    return str(caught.value)


def refusal_of_config(config: dict) -> str:
    return refusal(state_of(block("b", config)))


# --- validation: every rule with its message ---------------------------------------------


@pytest.mark.parametrize("interval", [0, 604_801, -5])
def test_schedule_interval_outside_osquery_range_is_refused(interval: int) -> None:
    message = refusal_of_config({"schedule": {"q": {"query": "SELECT 1", "interval": interval}}})
    assert message == (
        f"block 'b': schedule query 'q': interval {interval} is outside 1..604800 seconds"
    )


@pytest.mark.parametrize("interval", [1, 604_800, "60"])
def test_schedule_interval_at_the_limits_or_numeric_string_is_accepted(interval: object) -> None:
    config = {"schedule": {"q": {"query": "SELECT 1", "interval": interval}}}
    assert validate_state(state_of(block("b", config))) == []


@pytest.mark.parametrize("interval", [1.5, True, "often"])
def test_schedule_interval_that_is_not_a_whole_number_is_refused(interval: object) -> None:
    message = refusal_of_config({"schedule": {"q": {"query": "SELECT 1", "interval": interval}}})
    assert message == "block 'b': schedule query 'q': 'interval' must be a whole number"


@pytest.mark.parametrize(
    "name", ["query.x", "cache.x", "config_views.x", "last_epoch", "login_counter"]
)
def test_reserved_schedule_query_names_are_refused(name: str) -> None:
    message = refusal_of_config({"schedule": {name: {"query": "SELECT 1"}}})
    assert message == f"block 'b': schedule query name {name!r} {RESERVED_NAME_RULE}"


def test_reserved_pack_query_names_are_refused_by_their_stored_name() -> None:
    config = {"packs": {"fim": {"queries": {"login_counter": {"query": "SELECT 1"}}}}}
    assert refusal_of_config(config) == (
        f"block 'b': pack 'fim' query name 'login_counter' {RESERVED_NAME_RULE}"
    )
    # Stored as pack_fim_query.x: the prefix rule cannot fire inside a pack.
    allowed = {"packs": {"fim": {"queries": {"query.x": {"query": "SELECT 1"}}}}}
    assert validate_state(state_of(block("b", allowed))) == []


@pytest.mark.parametrize("query", [5, None, "", "   "])
def test_a_query_without_sql_text_is_refused(query: object) -> None:
    message = refusal_of_config({"schedule": {"q": {"query": query}}})
    assert message == "block 'b': schedule query 'q' needs a non-empty string 'query'"


def test_pack_query_without_sql_names_the_pack() -> None:
    message = refusal_of_config({"packs": {"p": {"queries": {"q": {"interval": 60}}}}})
    assert message == "block 'b': pack 'p' query 'q' needs a non-empty string 'query'"


def test_a_query_that_is_not_an_object_is_refused() -> None:
    message = refusal_of_config({"schedule": {"q": "SELECT 1"}})
    assert message == "block 'b': schedule query 'q' must be an object"


@pytest.mark.parametrize("key", ["error", "node_invalid"])
def test_keys_reserved_by_the_tls_protocol_are_refused(key: str) -> None:
    message = refusal_of_config({key: "anything"})
    assert message == f"block 'b': top-level key {key!r} is reserved by osquery's TLS protocol"


def test_a_block_nested_32_levels_is_refused_and_31_accepted() -> None:
    def nested(levels: int) -> dict:
        value: dict = {}
        for _ in range(levels - 2):  # the block config itself is level 1, `views` level 2
            value = {"x": value}
        return {"views": value}

    assert validate_state(state_of(block("b", nested(31)))) == []
    assert refusal_of_config(nested(32)) == (
        "block 'b': the config is nested 32 levels deep or more"
    )


def test_string_valued_packs_are_refused() -> None:
    message = refusal_of_config({"packs": {"it": "/etc/osquery/packs/it.conf"}})
    assert message == (
        "block 'b': pack 'it' is a string; osquery's TLS config plugin ignores"
        " string-valued packs, inline the pack as an object"
    )


def test_a_pack_that_is_not_an_object_is_refused() -> None:
    assert refusal_of_config({"packs": {"it": [1]}}) == "block 'b': pack 'it' must be an object"


def test_pack_discovery_must_be_sql_strings() -> None:
    message = refusal_of_config({"packs": {"p": {"discovery": "SELECT 1", "queries": {}}}})
    assert message == "block 'b': pack 'p': 'discovery' must be a list of SQL strings"


@pytest.mark.parametrize("seconds", ["90", "0", "hourly"])
def test_decorator_interval_not_a_multiple_of_60_is_refused(seconds: str) -> None:
    message = refusal_of_config({"decorators": {"interval": {seconds: ["SELECT 1"]}}})
    assert message == (
        f"block 'b': decorator interval {seconds!r} is not a multiple of 60 seconds"
        " (osquery skips it)"
    )


def test_decorator_queries_must_be_lists_of_sql() -> None:
    assert refusal_of_config({"decorators": {"load": "SELECT 1"}}) == (
        "block 'b': decorators.load must be a list of SQL strings"
    )
    assert refusal_of_config({"decorators": {"interval": {"60": "SELECT 1"}}}) == (
        "block 'b': decorators.interval.60 must be a list of SQL strings"
    )


def test_option_floats_are_refused() -> None:
    message = refusal_of_config({"options": {"schedule_splay_percent": 2.5}})
    assert message == (
        "block 'b': option 'schedule_splay_percent' is a float (2.5); osquery misreads floats,"
        " use a whole number or a string"
    )


def test_option_nulls_are_refused() -> None:
    message = refusal_of_config({"options": {"host_identifier": None}})
    assert message == "block 'b': option 'host_identifier' is null; osquery skips it"


@pytest.mark.parametrize("value", ["10", True, -1])
def test_integer_flags_with_other_types_are_refused(value: object) -> None:
    message = refusal_of_config({"options": {"distributed_interval": value}})
    assert message == (
        f"block 'b': option 'distributed_interval' must be a whole number of 0 or more,"
        f" not {value!r}"
    )


def test_options_of_ordinary_types_are_accepted() -> None:
    options = {"host_identifier": "uuid", "disable_decorators": False, "custom_x": {"a": 1}}
    assert validate_state(state_of(block("b", {"options": options}))) == []


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [("options", 5, "an object"), ("schedule", [], "an object"), ("file_accesses", {}, "a list")],
)
def test_known_sections_of_the_wrong_json_type_are_refused(
    key: str, value: object, kind: str
) -> None:
    message = refusal_of_config({key: value})
    assert message == f"block 'b': {key!r} must be {kind}; osquery ignores it otherwise"


def test_a_block_without_targets_is_refused() -> None:
    message = refusal(state_of(Block("b", Targets(), {})))
    assert message == (
        "block 'b': has no targets (set all: true, or some tags, platforms, nodes or labels)"
    )


def test_targeting_an_unknown_label_is_refused() -> None:
    message = refusal(state_of(block("b", {}, labels=["ghosts"])))
    assert message == "block 'b': targets unknown label 'ghosts'"


def test_targeting_an_unknown_platform_is_refused() -> None:
    message = refusal(state_of(block("b", {}, platforms=["ubuntu"])))
    assert message == (
        "block 'b': targets: unknown platform 'ubuntu' (use linux, darwin, windows, freebsd)"
    )


def test_label_rules() -> None:
    assert refusal(state_of(labels=(Label("l", " ", 60),))) == (
        "label 'l' needs a non-empty string 'query'"
    )
    assert refusal(state_of(labels=(Label("l", "SELECT 1", 0),))) == (
        "label 'l': interval 0 is outside 1..604800 seconds"
    )
    assert refusal(state_of(labels=(Label("l", "SELECT 1", 60, ("mac",)),))) == (
        "label 'l': unknown platform 'mac' (use linux, darwin, windows, freebsd)"
    )


def test_unknown_keys_and_cli_only_flags_are_warnings() -> None:
    config = {"fleet_extras": {}, "options": {"config_refresh": 10}}
    assert validate_state(state_of(block("b", config))) == [
        "block 'b': unknown key 'fleet_extras' (osquery ignores it)",
        "block 'b': option 'config_refresh' is command-line only (osquery ignores it here)",
    ]


def test_the_default_state_is_valid_without_warnings() -> None:
    assert validate_state(DEFAULT_STATE) == []


def test_a_rendered_config_over_one_mib_is_refused_and_at_the_limit_accepted() -> None:
    def config_of_size(size: int) -> str:
        return '{"views":{"v":"' + "x" * (size - len('{"views":{"v":""}}')) + '"}}'

    check_rendered(config_of_size(MAX_CONFIG_BYTES))
    with pytest.raises(InvalidState) as caught:
        check_rendered(config_of_size(MAX_CONFIG_BYTES + 1))
    assert str(caught.value) == "the config is larger than osquery's limit of 1048576 bytes"


def test_a_rendered_config_nested_32_levels_is_refused() -> None:
    check_rendered('{"v":' + "[" * 30 + "]" * 30 + "}")
    with pytest.raises(InvalidState) as caught:
        check_rendered('{"v":' + "[" * 31 + "]" * 31 + "}")
    assert str(caught.value) == "the config is nested 32 levels deep or more"


def test_plain_config_json_is_parsed_with_clear_errors() -> None:
    assert parse_config_json('{"schedule":{}}') == {"schedule": {}}
    for text, message in [
        ("[]", "the config must be a JSON object"),
        ('{"a": NaN}', "NaN is not valid JSON"),
    ]:
        with pytest.raises(InvalidState) as caught:
            parse_config_json(text)
        assert str(caught.value) == message
    with pytest.raises(InvalidState, match=r"^the config is not valid JSON: "):
        parse_config_json("{")


# --- targeting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "family"),
    [
        ("ubuntu", "linux"), ("rhel", "linux"), ("amzn", "linux"), ("Debian", "linux"),
        ("darwin", "darwin"), ("windows", "windows"), ("freebsd", "freebsd"), ("beos", ""),
        ("", ""),
    ],
)  # fmt: skip
def test_platform_family(platform: str, family: str) -> None:
    assert platform_family(platform) == family


@pytest.mark.parametrize(
    ("query_platform", "family", "matches"),
    [
        ("", "windows", True), ("any", "darwin", True), ("all", "linux", True),
        ("posix", "linux", True), ("posix", "darwin", True), ("posix", "windows", False),
        ("linux,darwin", "darwin", True), ("linux,darwin", "windows", False),
        ("ubuntu", "linux", True), ("centos", "linux", True), ("windows", "linux", False),
        ("windows", "", True),
    ],
)  # fmt: skip
def test_platform_matches_like_osquery_check_platform(
    query_platform: str, family: str, matches: bool
) -> None:
    assert platform_matches(query_platform, family) is matches


def test_node_tags_come_from_node_id_and_host_identifier() -> None:
    state = state_of(node_tags={"n1": ["prod"], "web-01": ["web", "prod"]})
    assert node_tags_for(state, "n1", "web-01") == {"prod", "web"}
    assert node_tags_for(state, "n2", "") == frozenset()


def test_group_keeps_only_what_some_block_targets() -> None:
    state = state_of(
        block("base", {}),
        block("prod", {}, tags=["prod"]),
        block("docker", {}, labels=["docker-hosts"]),
        block("pet", {}, nodes=["n9"]),
        labels=(Label("docker-hosts", "SELECT 1", 300),),
    )
    facts = NodeFacts("n1", "ubuntu", frozenset({"prod", "web"}), frozenset({"docker-hosts", "x"}))
    group = group_of(state, facts)
    assert group == linux(tags=("prod",), labels=("docker-hosts",))
    assert group.describe() == "linux tags=prod labels=docker-hosts"
    # Another node differing only in untargeted facts shares the group, hence the cache entry.
    other = NodeFacts("n2", "debian", frozenset({"prod"}), frozenset({"docker-hosts"}))
    assert group_of(state, other) == group
    pet = group_of(state, NodeFacts("n9", "darwin", frozenset(), frozenset()))
    assert pet == NodeGroup("darwin", node_id="n9")
    assert pet.describe() == "node n9"
    assert NodeGroup("").describe() == "unknown-platform"


def test_block_applies_when_every_kind_matches_and_any_target_within_one() -> None:
    mixed = block("m", {}, tags=["prod", "staging"], platforms=["windows"])
    assert block_applies(mixed, NodeGroup("windows", frozenset({"prod"})))
    assert block_applies(mixed, NodeGroup("windows", frozenset({"staging", "x"})))
    assert not block_applies(mixed, linux(tags=("prod",)))
    assert not block_applies(mixed, NodeGroup("windows"))
    assert block_applies(block("a", {}, all=True), NodeGroup(""))
    narrowed = block("n", {}, all=True, labels=["x"])
    assert block_applies(narrowed, linux(labels=("x",)))
    assert not block_applies(narrowed, linux())
    pinned = block("p", {}, nodes=["n1"], platforms=["linux"])
    assert block_applies(pinned, linux(node_id="n1"))
    assert not block_applies(pinned, NodeGroup("darwin", node_id="n1"))


# --- composition ---------------------------------------------------------------------------


def interval_of(state: State, group: NodeGroup) -> object:
    return compose(state, group).config["options"]["distributed_interval"]


def test_targeting_by_tag_platform_node_and_label() -> None:
    state = state_of(
        block("base", {"schedule": {"uptime": UPTIME}}),
        block("prod", {"schedule": {"prod_q": {"query": "SELECT 2"}}}, tags=["prod"]),
        block("mac", {"schedule": {"mac_q": {"query": "SELECT 3"}}}, platforms=["darwin"]),
        block("pet", {"schedule": {"pet_q": {"query": "SELECT 4"}}}, nodes=["n9"]),
        block("dock", {"schedule": {"dock_q": {"query": "SELECT 5"}}}, labels=["docker"]),
        labels=(Label("docker", "SELECT 1", 300),),
    )

    def scheduled(group: NodeGroup) -> list[str]:
        return list(compose(state, group).config["schedule"])

    assert scheduled(linux()) == ["uptime"]
    assert scheduled(linux(tags=("prod",))) == ["prod_q", "uptime"]
    assert scheduled(NodeGroup("darwin")) == ["mac_q", "uptime"]
    assert scheduled(linux(node_id="n9")) == ["pet_q", "uptime"]
    assert scheduled(linux(labels=("docker",))) == ["dock_q", "uptime"]


def test_precedence_node_over_label_over_tag_over_platform_over_all() -> None:
    def setting(value: int) -> dict:
        return {"options": {"distributed_interval": value}}

    state = state_of(
        block("base", setting(10)),
        block("linux", setting(20), platforms=["linux"]),
        block("prod", setting(30), tags=["prod"]),
        block("dock", setting(40), labels=["docker"]),
        block("pet", setting(50), nodes=["n9"]),
        labels=(Label("docker", "SELECT 1", 300),),
    )
    assert interval_of(state, NodeGroup("darwin")) == 10
    assert interval_of(state, linux()) == 20
    assert interval_of(state, linux(tags=("prod",))) == 30
    assert interval_of(state, linux(tags=("prod",), labels=("docker",))) == 40
    everything = compose(state, linux(tags=("prod",), labels=("docker",), node_id="n9"))
    assert everything.config["options"]["distributed_interval"] == 50
    assert everything.blocks == ("base", "linux", "prod", "dock", "pet")
    assert everything.conflicts == (
        "options.distributed_interval: block 'linux' overrides 'base'",
        "options.distributed_interval: block 'prod' overrides 'linux'",
        "options.distributed_interval: block 'dock' overrides 'prod'",
        "options.distributed_interval: block 'pet' overrides 'dock'",
    )


def test_a_block_counts_as_specific_as_its_most_specific_target() -> None:
    wide = block("a-wide", {"options": {"x": "wide"}}, platforms=["linux"], tags=["prod"])
    tagged = block("z-tag", {"options": {"x": "tag"}}, tags=["prod"])
    composed = compose(state_of(wide, tagged), linux(tags=("prod",)))
    # Both are tag blocks; at equal specificity the name sorting last wins.
    assert composed.config["options"]["x"] == "tag"
    assert composed.conflicts == ("options.x: block 'z-tag' overrides 'a-wide'",)


def test_equal_values_from_two_blocks_are_not_a_conflict() -> None:
    state = state_of(
        block("a", {"schedule": {"uptime": UPTIME}}),
        block("b", {"schedule": {"uptime": dict(UPTIME)}}),
    )
    assert compose(state, linux()).conflicts == ()


def test_a_query_is_replaced_whole_not_merged_field_by_field() -> None:
    state = state_of(
        block("base", {"schedule": {"uptime": {**UPTIME, "snapshot": True}}}),
        block("prod", {"schedule": {"uptime": {"query": "SELECT 9"}}}, tags=["prod"]),
    )
    composed = compose(state, linux(tags=("prod",)))
    assert composed.config["schedule"]["uptime"] == {"query": "SELECT 9"}
    assert composed.conflicts == ("schedule.uptime: block 'prod' overrides 'base'",)


def test_queries_and_packs_for_other_platforms_are_dropped() -> None:
    config = {
        "schedule": {
            "everywhere": {"query": "SELECT 1"},
            "win_only": {"query": "SELECT 2", "platform": "windows"},
            "posix": {"query": "SELECT 3", "platform": "posix"},
        },
        "packs": {
            "mac_pack": {"platform": "darwin", "queries": {"a": {"query": "SELECT 4"}}},
            "mixed": {
                "queries": {
                    "lin": {"query": "SELECT 5", "platform": "ubuntu"},
                    "win": {"query": "SELECT 6", "platform": "windows"},
                }
            },
        },
    }
    state = state_of(block("b", config))
    on_linux = compose(state, linux()).config
    assert list(on_linux["schedule"]) == ["everywhere", "posix"]
    assert list(on_linux["packs"]) == ["mixed"]
    assert list(on_linux["packs"]["mixed"]["queries"]) == ["lin"]
    on_windows = compose(state, NodeGroup("windows")).config
    assert list(on_windows["schedule"]) == ["everywhere", "win_only"]
    assert list(on_windows["packs"]["mixed"]["queries"]) == ["win"]
    # With an unknown platform everything is sent: osquery filters for itself.
    assert compose(state, NodeGroup("")).config == state.blocks[0].config


def test_a_query_for_another_platform_does_not_shadow_a_general_one() -> None:
    state = state_of(
        block("base", {"schedule": {"q": {"query": "SELECT 1"}}}),
        block(
            "prod", {"schedule": {"q": {"query": "SELECT 2", "platform": "windows"}}}, tags=["prod"]
        ),
    )
    composed = compose(state, linux(tags=("prod",)))
    assert composed.config["schedule"]["q"] == {"query": "SELECT 1"}
    assert composed.conflicts == ()


def test_decorators_lists_concatenate_in_precedence_order() -> None:
    base = {"decorators": {"load": ["SELECT a", "SELECT b"], "interval": {"3600": ["SELECT h"]}}}
    prod = {
        "decorators": {
            "load": ["SELECT b", "SELECT c"],
            "always": ["SELECT d"],
            "interval": {"3600": ["SELECT h2"], "60": ["SELECT m"]},
        }
    }
    state = state_of(block("base", base), block("prod", prod, tags=["prod"]))
    composed = compose(state, linux(tags=("prod",)))
    assert composed.config["decorators"] == {
        "always": ["SELECT d"],
        "interval": {"3600": ["SELECT h", "SELECT h2"], "60": ["SELECT m"]},
        "load": ["SELECT a", "SELECT b", "SELECT c"],
    }
    assert composed.conflicts == ()


def test_fim_yara_and_events_merge_by_category_or_as_unions() -> None:
    base = {
        "file_paths": {"etc": ["/etc/%%"], "tmp": ["/tmp/%"]},
        "file_accesses": ["etc"],
        "yara": {"signatures": {"s1": ["/a.yar"]}, "signature_urls": ["https://x/a"]},
        "events": {"disable_subscribers": ["user_events"]},
    }
    prod = {
        "file_paths": {"etc": ["/etc/ssh/%%"], "home": ["/home/%/.ssh/%%"]},
        "file_accesses": ["etc", "home"],
        "yara": {"signatures": {"s2": ["/b.yar"]}, "signature_urls": ["https://x/b"]},
        "events": {"disable_subscribers": ["syslog"]},
    }
    state = state_of(block("base", base), block("prod", prod, tags=["prod"]))
    composed = compose(state, linux(tags=("prod",)))
    assert composed.config["file_paths"] == {
        "etc": ["/etc/ssh/%%"],
        "home": ["/home/%/.ssh/%%"],
        "tmp": ["/tmp/%"],
    }
    assert composed.config["file_accesses"] == ["etc", "home"]
    assert composed.config["yara"] == {
        "signature_urls": ["https://x/a", "https://x/b"],
        "signatures": {"s1": ["/a.yar"], "s2": ["/b.yar"]},
    }
    assert composed.config["events"] == {"disable_subscribers": ["user_events", "syslog"]}
    assert composed.conflicts == ("file_paths.etc: block 'prod' overrides 'base'",)


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    forward = {"schedule": {"a": {"query": "SELECT 1", "interval": 60}, "b": UPTIME}}
    backward = {
        "schedule": {
            "b": dict(reversed(UPTIME.items())),
            "a": {"interval": 60, "query": "SELECT 1"},
        }
    }
    first = compose(state_of(block("x", forward), block("y", {"options": {"a": 1}})), linux())
    second = compose(state_of(block("y", {"options": {"a": 1}}), block("x", backward)), linux())
    assert first.config_json == second.config_json
    assert first.config_json.startswith('{"options":{"a":1},"schedule":{"a":{"interval":60,')
    assert compose(State.from_json(State(blocks=(block("x", forward),)).to_json()), linux()) == (
        compose(state_of(block("x", backward)), linux())
    )


def test_empty_state_renders_an_empty_config_and_default_state_the_built_in_one() -> None:
    assert compose(State(), linux()).config_json == "{}"
    default = compose(DEFAULT_STATE, NodeGroup(""))
    assert default.config_json == (
        '{"options":{"distributed_interval":60,"logger_tls_period":10},"schedule":{}}'
    )
    assert default.blocks == ("default",)


def test_osquery_config_hash_test_vector() -> None:
    # osquery/plugins/config/tests/tls_config_tests.cpp (docs/osquery-protocol.md §5.2).
    response = (
        '{"schedule":{"tls_proc":{"query":"select * from processes","interval":1}},'
        '"node_invalid":false,"node":true}'
    )
    assert config_hash(response) == "1c70dc4608ed9f8d8e24d23359a46e8739a93558"
    assert (
        osquery_info_hash(config_hash(response))
        == hashlib.sha1(b"1c70dc4608ed9f8d8e24d23359a46e8739a93558").hexdigest()
    )


def test_composed_hash_is_osquery_hash_of_the_exact_bytes() -> None:
    composed = compose(state_of(block("b", {"schedule": {"uptime": UPTIME}})), linux())
    assert composed.config_json == (
        '{"schedule":{"uptime":{"interval":3600,"query":"SELECT * FROM uptime"}}}'
    )
    assert composed.sha1 == hashlib.sha1(composed.config_json.encode()).hexdigest()
    assert json.loads(composed.config_json) == composed.config


def test_non_ascii_text_is_sent_as_utf8_not_escaped() -> None:
    composed = compose(state_of(block("b", {"views": {"v": "SELECT 'é'"}})), linux())
    assert composed.config_json == '{"views":{"v":"SELECT \'é\'"}}'


# --- state files ---------------------------------------------------------------------------

EXAMPLE_YAML = """
blocks:
  base:
    targets: {all: true}
    config:
      options: {distributed_interval: 10}
      schedule:
        uptime: {query: "SELECT * FROM uptime", interval: 3600}
      decorators:
        interval:
          3600: ["SELECT hostname FROM system_info"]
  linux-prod:
    targets: {platforms: [linux], tags: [prod]}
    config:
      packs: {fim: {queries: {files: {query: "SELECT * FROM file_events"}}, platform: linux}}
      file_paths: {etc: ["/etc/%%"]}
labels:
  docker-hosts: {query: "SELECT 1 FROM processes WHERE name = 'dockerd'", interval: 300,
                 platforms: [linux]}
node_tags:
  web-01: [prod, web]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_state_parses_into_blocks_labels_and_tags(tmp_path: Path) -> None:
    state = State.from_files([write(tmp_path / "state.yaml", EXAMPLE_YAML)])
    assert [b.name for b in state.blocks] == ["base", "linux-prod"]
    assert state.blocks[1].targets == Targets(platforms=("linux",), tags=("prod",))
    # YAML reads `3600:` as an integer; osquery's JSON needs the string key.
    assert state.blocks[0].config["decorators"] == {
        "interval": {"3600": ["SELECT hostname FROM system_info"]}
    }
    assert state.labels == (
        Label("docker-hosts", "SELECT 1 FROM processes WHERE name = 'dockerd'", 300, ("linux",)),
    )
    assert state.node_tags == {"web-01": ("prod", "web")}
    # The docs' example combines two kinds: both must match now, and apply says so.
    assert validate_state(state) == [
        "block 'linux-prod': targets combine platforms and tags: a node must match each of"
        " them (AND); earlier Quarry versions applied the block when any matched (OR)"
    ]


def test_json_round_trip_is_canonical(tmp_path: Path) -> None:
    state = State.from_files([write(tmp_path / "state.yaml", EXAMPLE_YAML)])
    text = state.to_json()
    assert State.from_json(text) == state
    assert State.from_json(text).to_json() == text
    assert json.loads(text)["node_tags"] == {"web-01": ["prod", "web"]}


def test_export_then_apply_gives_an_equal_state(tmp_path: Path) -> None:
    state = State.from_files([write(tmp_path / "state.yaml", EXAMPLE_YAML)])
    written = state.export_files(tmp_path / "export")
    assert [p.name for p in written] == ["blocks.yaml", "labels.yaml", "node_tags.yaml"]
    assert State.from_files([tmp_path / "export"]) == state
    assert State.from_files(written) == state


def test_export_writes_only_non_empty_sections(tmp_path: Path) -> None:
    written = DEFAULT_STATE.export_files(tmp_path)
    assert [p.name for p in written] == ["blocks.yaml"]
    assert yaml.safe_load(written[0].read_text())["blocks"]["default"]["targets"] == {"all": True}
    assert State.from_files([tmp_path]) == DEFAULT_STATE


def test_a_directory_merges_yaml_and_json_files(tmp_path: Path) -> None:
    write(tmp_path / "10-base.json", json.dumps({"blocks": {"base": {"targets": {"all": True}}}}))
    write(tmp_path / "20-labels.yml", "labels:\n  l: {query: SELECT 1, interval: 60}\n")
    write(tmp_path / "README.md", "not state")
    state = State.from_files([tmp_path])
    assert [b.name for b in state.blocks] == ["base"]
    assert state.blocks[0].config == {}
    assert [label.name for label in state.labels] == ["l"]


def test_a_name_defined_in_two_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "blocks:\n  base: {targets: {all: true}}\n")
    write(tmp_path / "b.yaml", "blocks:\n  base: {targets: {tags: [x]}}\n")
    with pytest.raises(InvalidState) as caught:
        State.from_files([tmp_path])
    assert str(caught.value) == "block 'base' is defined twice (a.yaml and b.yaml)"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "s.yaml",
            "queries: {}\n",
            "s.yaml: unknown section 'queries' (expected blocks, labels, node_tags, detections)",
        ),
        (
            "q.yaml",
            "view: queries\nblocks:\n  b: {targets: {all: true}, config: {schedule: {}}}\n",
            "q.yaml: a `quarry get queries` view, which holds only part of each block, cannot"
            " be applied (it would drop the rest of the state): apply the state files it was"
            " read from, or `quarry get blocks`",
        ),
        (
            "s.yaml",
            "blocks:\n  b: {targets: {hosts: [x]}}\n",
            "s.yaml: block 'b': unknown target 'hosts'"
            " (expected all, tags, platforms, nodes, labels)",
        ),
        (
            "s.yaml",
            "blocks:\n  b: {targets: {tags: prod}}\n",
            "s.yaml: block 'b': targets.tags must be a list of strings",
        ),
        (
            "s.yaml",
            "blocks:\n  b: {target: {all: true}}\n",
            "s.yaml: block 'b': unknown field 'target' (expected targets, config)",
        ),
        (
            "s.yaml",
            "blocks:\n  b: {targets: {all: true}, config: {views: {d: 2024-01-01}}}\n",
            "s.yaml: block 'b': datetime.date(2024, 1, 1) is not a JSON value"
            " (quote it to make it a string)",
        ),
        (
            "s.yaml",
            "labels:\n  l: {query: SELECT 1, interval: soon}\n",
            "s.yaml: label 'l': 'interval' must be a whole number of seconds",
        ),
        (
            "s.yaml",
            "- a list\n",
            "s.yaml: the top level must be a mapping of blocks, labels, node_tags, detections",
        ),
        ("s.json", '{"blocks": NaN}', "s.json: NaN is not valid JSON"),
        ("s.toml", "", "s.toml: state files must end in .yaml, .yml or .json"),
    ],
)
def test_malformed_state_files_are_refused_with_the_place(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(InvalidState) as caught:
        State.from_files([write(tmp_path / name, text)])
    assert str(caught.value).replace(str(tmp_path) + "/", "") == message


def test_single_block_is_what_config_set_means() -> None:
    state = State.single_block({"schedule": {"uptime": UPTIME}})
    assert state.blocks == (Block("default", Targets(all=True), {"schedule": {"uptime": UPTIME}}),)
    assert compose(state, NodeGroup("windows")).config == {"schedule": {"uptime": UPTIME}}


# --- diffs ---------------------------------------------------------------------------------


def test_diff_lists_only_the_groups_whose_config_changes() -> None:
    old = state_of(block("base", {"options": {"distributed_interval": 10}}))
    new = state_of(
        block("base", {"options": {"distributed_interval": 10}}),
        block("prod", {"options": {"distributed_interval": 5}}, tags=["prod"]),
    )
    prod, plain = linux(tags=("prod",)), linux()
    diffs = diff_states(old, new, [plain, prod, prod])
    assert [group for group, _ in diffs] == [prod]
    text = diffs[0][1]
    assert text.startswith("--- live: linux tags=prod\n+++ new: linux tags=prod\n")
    assert '-    "distributed_interval": 10\n' in text
    assert '+    "distributed_interval": 5\n' in text


# --- staged rollout ------------------------------------------------------------------------


def test_rollout_bucket_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"7:node-1").hexdigest()
    assert rollout_bucket("node-1", 7) == int(digest[:8], 16) % 100


def test_ten_percent_selects_about_a_tenth_of_nodes() -> None:
    rollout = config_pb2.Rollout(candidate_version=3, percent=10)
    chosen = sum(gets_candidate(f"node-{i}", rollout) for i in range(10_000))
    assert 800 <= chosen <= 1200


def test_a_new_candidate_draws_a_different_sample() -> None:
    nodes = [f"node-{i}" for i in range(1000)]
    first = {n for n in nodes if rollout_bucket(n, 1) < 10}
    second = {n for n in nodes if rollout_bucket(n, 2) < 10}
    assert first != second


def test_listed_nodes_get_the_candidate_and_no_candidate_means_nobody() -> None:
    listed = config_pb2.Rollout(candidate_version=3, node_ids=["n1"])
    assert gets_candidate("n1", listed)
    assert not gets_candidate("n2", listed)
    assert not gets_candidate("n1", config_pb2.Rollout(candidate_version=0, node_ids=["n1"]))


def test_a_count_picks_the_lowest_buckets() -> None:
    nodes = [f"node-{i}" for i in range(50)]
    picked = nodes_for_count(nodes, 4, 5)
    assert len(picked) == 5
    cutoff = max(rollout_bucket(n, 4) for n in picked)
    assert all(rollout_bucket(n, 4) >= cutoff for n in set(nodes) - set(picked))
    assert nodes_for_count(reversed(nodes), 4, 5) == picked


# --- one targeting model, every problem at once, the tree as files -------------------------


def test_a_selection_ands_kinds_and_ors_within_one() -> None:
    web_or_db_on_linux = Selection.of(tags=["web", "db"], platforms=["linux"])
    assert web_or_db_on_linux.matches("ubuntu", frozenset({"db"}))
    assert not web_or_db_on_linux.matches("darwin", frozenset({"db"}))
    assert not web_or_db_on_linux.matches("ubuntu", frozenset({"cache"}))
    assert Selection().matches("", frozenset())
    labelled = Selection.of(labels=["docker"], nodes=["n1"])
    assert labelled.matches("", frozenset(), frozenset({"docker"}), "n1")
    assert not labelled.matches("", frozenset(), frozenset({"docker"}), "n2")


def test_a_platform_filter_takes_the_family_or_the_platform_itself() -> None:
    assert platform_selected("linux", "ubuntu") and platform_selected("ubuntu", "ubuntu")
    assert platform_selected("Linux", "rhel") and not platform_selected("rhel", "ubuntu")
    assert not platform_selected("linux", "")


def test_every_problem_is_reported_at_once_with_its_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "blocks:\n  one: {targets: {}, config: {}}\n")
    write(
        tmp_path / "b.yaml",
        "blocks:\n  two:\n    targets: {all: true}\n    config:\n"
        "      schedule: {q: {query: ''}, r: {query: 'SELECT 1', interval: 0}}\n"
        "      options: {x: null}\n",
    )
    files = read_state_files([tmp_path])
    assert files.origins[("blocks", "two")] == "b.yaml"
    with pytest.raises(InvalidState) as caught:
        validate_state(files.state, files.origins)
    assert list(caught.value.problems) == [
        "a.yaml: block 'one': has no targets (set all: true, or some tags, platforms, nodes"
        " or labels)",
        "b.yaml: block 'two': option 'x' is null; osquery skips it",
        "b.yaml: block 'two': schedule query 'q' needs a non-empty string 'query'",
        "b.yaml: block 'two': schedule query 'r': interval 0 is outside 1..604800 seconds",
    ]


def test_parse_problems_of_every_file_are_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "blocks:\n  x: {targets: {all: true}, colour: red}\n")
    write(tmp_path / "b.yaml", "labels: [not, a, mapping]\n")
    write(tmp_path / "c.yaml", "blocks:\n  x: {targets: {all: true}}\n")
    with pytest.raises(InvalidState) as caught:
        read_state_files([tmp_path])
    assert len(caught.value.problems) == 3
    assert "a.yaml: block 'x': unknown field 'colour'" in caught.value.problems[0]
    assert caught.value.problems[1] == "b.yaml: 'labels' must be a mapping of names"
    assert "defined twice (a.yaml and c.yaml)" in caught.value.problems[2]


def test_a_repeated_key_names_its_file_line_and_key(tmp_path: Path) -> None:
    write(
        tmp_path / "s.yaml",
        "blocks:\n  b:\n    targets: {all: true}\n    config:\n"
        "      options: {a: 1, a: 2}\n  b: {targets: {all: true}}\n",
    )
    with pytest.raises(InvalidState) as caught:
        State.from_files([tmp_path / "s.yaml"])
    assert list(caught.value.problems) == [
        "s.yaml: line 5: key 'a' is repeated in one mapping (only one value would be kept)",
        "s.yaml: line 6: key 'b' is repeated in one mapping (only one value would be kept)",
    ]
    write(tmp_path / "j.json", '{"blocks": {\n "b": {},\n "b": {}}}')
    with pytest.raises(InvalidState, match=r"^j\.json: line 3: key 'b' is repeated"):
        State.from_files([tmp_path / "j.json"])
    # YAML merge keys are not repeats.
    write(tmp_path / "m.yaml", "blocks:\n  b: &t {targets: {all: true}}\n  c: {<<: *t}\n")
    assert [b.name for b in State.from_files([tmp_path / "m.yaml"]).blocks] == ["b", "c"]


def test_export_over_an_older_export_leaves_no_stale_file(tmp_path: Path) -> None:
    with_labels = state_of(
        block("base", {}), labels=(Label("x", "SELECT 1", 60),), node_tags={"h": ("t",)}
    )
    with_labels.export_files(tmp_path)
    exported = DEFAULT_STATE.export_files(tmp_path)
    assert sorted(p.name for p in exported.removed) == ["labels.yaml", "node_tags.yaml"]
    assert State.from_files([tmp_path]) == DEFAULT_STATE


def test_export_refuses_a_directory_with_other_state_files_unless_told(tmp_path: Path) -> None:
    write(tmp_path / "packs.yaml", "blocks:\n  default: {targets: {all: true}}\n")
    write(tmp_path / "README.md", "not a state file")
    with pytest.raises(InvalidState, match=r"packs\.yaml"):
        DEFAULT_STATE.export_files(tmp_path)
    assert not (tmp_path / "blocks.yaml").exists()
    exported = DEFAULT_STATE.export_files(tmp_path, replace=True)
    assert [p.name for p in exported.removed] == ["packs.yaml"]
    assert (tmp_path / "README.md").exists()
    assert State.from_files([tmp_path]) == DEFAULT_STATE


def test_a_block_combining_kinds_is_warned_about() -> None:
    state = state_of(block("b", {}, platforms=["linux"], tags=["prod"]), block("a", {}))
    assert validate_state(state) == [
        "block 'b': targets combine platforms and tags: a node must match each of them (AND);"
        " earlier Quarry versions applied the block when any matched (OR)"
    ]
