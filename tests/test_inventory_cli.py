"""The inventory's CLI rules without a cluster (quarry/cli/commands/inventory.py): which
nodes `--os-version` and `--stale` keep, and how ages and vitals print. The commands
themselves run against a real cluster in tests/test_host_queries.py."""

from __future__ import annotations

from quarry.cli.commands.inventory import age_text, matches_vitals, vitals_lines

NOW = 1_800_000_000.0
UBUNTU = {"os_name": "Ubuntu", "os_version": "22.04.4 LTS", "last_answer_at": int(NOW) - 30}


def test_os_version_matches_name_and_version_in_any_case() -> None:
    assert matches_vitals(UBUNTU, "ubuntu 22.04", None, NOW)
    assert matches_vitals(UBUNTU, "22.04", None, NOW)
    assert not matches_vitals(UBUNTU, "20.04", None, NOW)
    assert not matches_vitals(None, "22.04", None, NOW)  # never answered: no OS to match


def test_stale_is_an_old_answer_or_none() -> None:
    assert not matches_vitals(UBUNTU, None, 60, NOW)
    assert matches_vitals(UBUNTU, None, 20, NOW)
    assert matches_vitals(None, None, 7200, NOW)
    assert matches_vitals(None, None, None, NOW)  # no filter keeps every node


def test_ages_and_vitals_print_for_people() -> None:
    assert [age_text(s) for s in (0, 59, 60, 3599, 3600, 86400 * 3)] == [
        "0s", "59s", "1m", "59m", "1h", "3d"
    ]  # fmt: skip
    lines = vitals_lines(
        {
            "uptime": {"collected_at": 1, "age_s": 720, "rows": [{"total_seconds": "9"}]},
            "logged_in_users": {"collected_at": 1, "age_s": 90, "rows": []},
        }
    )
    assert lines == [
        ("vitals", "collected 1m ago"),
        ("  uptime (12m ago)", "total_seconds=9"),
        ("  logged_in_users (1m ago)", "(no rows)"),
    ]
    assert vitals_lines({})[0][1].startswith("none yet")
