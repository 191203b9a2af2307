"""The stage registry: every versions/vN/stage.toml is read, checked, and answers what
the rest of imlab used to test stage names for."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from imlab import stages
from imlab.cluster import ClusterSpec
from imlab.stages import _parse

V4 = Path(__file__).resolve().parents[2] / "versions" / "v4" / "stage.toml"


def test_the_four_stages_are_found_in_order_with_their_facts() -> None:
    assert stages.names()[:4] == ("v1", "v2", "v3", "v4")
    v1, v2, v3, v4 = (stages.stage(n) for n in ("v1", "v2", "v3", "v4"))
    assert not v1.has_groups and v2.has_groups
    assert v1.needs == frozenset() and v2.needs == {"redis"} and v3.needs == {"redis", "kafka"}
    assert v4.uses_tokens and not v3.uses_tokens
    assert v4.front.name == "gateway" and v4.back is not None and v4.back.name == "worker"
    assert v3.back is None and v4.stores_before_publish and not v3.stores_before_publish


def test_an_unknown_stage_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown stage 'v9'; choose from v1, v2"):
        stages.stage("v9")


def test_process_counts_come_from_the_declaration() -> None:
    assert (ClusterSpec("v3").front, ClusterSpec("v3").back) == (3, 0)
    assert (ClusterSpec("v4").front, ClusterSpec("v4").back) == (2, 2)
    assert ClusterSpec("v2", servers=5).front == 1  # v2's server does not scale out
    assert ClusterSpec("v4", servers=3, workers=1).back == 1


def test_a_bad_declaration_is_refused_with_where_it_is() -> None:
    data = tomllib.loads(V4.read_text())
    for role in data["roles"]:
        role["client_facing"] = True
    with pytest.raises(ValueError, match="exactly one client-facing role"):
        _parse(data, "x/stage.toml")
    data = tomllib.loads(V4.read_text())
    del data["auth"]
    with pytest.raises(ValueError, match=r"x/stage\.toml: not a valid stage declaration"):
        _parse(data, "x/stage.toml")


def test_a_stage_may_need_a_sentinel_set_and_postgres_but_one_redis() -> None:
    data = tomllib.loads(V4.read_text())
    data["needs"] = ["sentinel", "kafka", "postgres"]
    info = _parse(data, "x/stage.toml")
    assert info.needs_sentinel and info.needs_postgres and info.uses_redis
    assert not info.needs_redis
    data["needs"] = ["redis", "sentinel"]
    with pytest.raises(ValueError, match="either redis or sentinel"):
        _parse(data, "x/stage.toml")


def test_the_seeds_sections_print_as_numbers_never_as_chinese_numerals() -> None:
    """stage.toml keeps the seed's own numeral; what imlab prints is `seed §N`, because
    a machine without a CJK font (CI's) shows 二..五 as empty boxes."""
    assert [stages.stage(n).seed_ref for n in ("v1", "v2", "v3", "v4")] == [
        "seed §2",
        "seed §3",
        "seed §4",
        "seed §5",
    ]
    assert stages.seed_ref("六") == stages.seed_ref(6) == stages.seed_ref("6") == "seed §6"
    data = tomllib.loads(V4.read_text())
    data["seed_section"] = "七"
    with pytest.raises(ValueError, match=r"x/stage\.toml: not a section of the seed"):
        _parse(data, "x/stage.toml")
