import pytest

from benchmark.config import ConfigError, parse_value, scenario_from_dict, suite_from_dict
from benchmark.running import parse_overrides, resolve_scenario


def test_override_parsing_is_typed_and_nested():
    over = parse_overrides(["rounds=3", "scenario.train.lr=1e-3", "defense.dp.sigma=2", "attack.dager.mode=adaptive",
                            "threat.observation=sgd"])
    assert over.scenario == {"rounds": 3, "train": {"lr": 1e-3}, "threat": {"observation": "sgd"}}
    assert over.defense == {"dp": {"sigma": 2}}
    assert over.attack == {"dager": {"mode": "adaptive"}}
    scenario = resolve_scenario("tiny", over.scenario)
    assert scenario.rounds == 3 and scenario.train.lr == 1e-3 and scenario.threat.observation == "sgd"


def test_parse_value_keeps_strings_and_literals():
    assert parse_value("0.5") == 0.5
    assert parse_value("[4, 8]") == [4, 8]
    assert parse_value("true") is True
    assert parse_value("smollm2") == "smollm2"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"roundz": 3}, "unknown key 'scenario.roundz'; valid keys: name"),
        ({"train": {"lr": "fast"}}, "scenario.train.lr must be a number"),
        ({"train": {"optimizer": "lion"}}, "train.optimizer must be 'adamw' or 'sgd'"),
        ({"rounds": 1.5}, "scenario.rounds must be an integer"),
        ({"tiers": [{"name": "x", "fraction": 1.0, "rank": 0}]}, "rank must be >= 1"),
        ({"tiers": [{"name": "x", "fraction": 1.0, "rank": 4, "budget": 1.5}]}, "budget must be in [0, 1]"),
        ({"clients_per_round": 99}, "clients_per_round must be in [1, n_clients"),
        ({"train": {"batch": 3}}, "unknown key 'scenario.train.batch'; valid keys: local_steps"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_override_prefix_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: scenario.<name|"):
        parse_overrides(["roundz=1"])
    with pytest.raises(ConfigError, match="expects key=value"):
        parse_overrides(["rounds"])


def test_suite_entries_accept_variants_and_reject_duplicate_labels():
    suite = suite_from_dict({"defenses": ["plain_lora", {"name": "dp", "label": "dp_s1", "sigma": 1.0}],
                             "defense": {"dp": {"clip": 0.5}}})
    variant = suite.defenses[1]
    assert (variant.name, variant.label, dict(variant.params)) == ("dp", "dp_s1", {"clip": 0.5, "sigma": 1.0})
    with pytest.raises(ConfigError, match="duplicate labels"):
        suite_from_dict({"defenses": ["dp", "dp"]})
    with pytest.raises(ConfigError, match="unknown key 'suite.defences'"):
        suite_from_dict({"defences": ["dp"]})


def test_suite_scenario_variants_get_their_own_labels_and_overrides():
    from benchmark.running import Overrides, plan

    suite = suite_from_dict({"scenarios": ["tiny", {"name": "tiny", "label": "tiny_b2", "threat": {"batch_size": 2},
                                                    "tiers": [{"name": "only", "fraction": 1.0, "rank": 8}]}]})
    groups = plan(suite, Overrides({}, {}, {}))
    by_name = {g.scenario.name: g.scenario for g in groups}
    assert set(by_name) == {"tiny", "tiny_b2"}
    assert by_name["tiny_b2"].threat.batch_size == 2 and by_name["tiny"].threat.batch_size == 1
    assert [t.rank for t in by_name["tiny_b2"].tiers] == [8]  # a list replaces the base list
    assert groups[0].cells[0].cell_id != groups[1].cells[0].cell_id
    with pytest.raises(ConfigError, match="duplicate labels"):
        suite_from_dict({"scenarios": ["tiny", "tiny"]})


def test_a_scenario_entry_can_name_its_own_seeds():
    from benchmark.config import ConfigError, scenario_specs

    specs = scenario_specs([{"name": "tiny", "label": "a", "seeds": [3, 4]}, "tiny"], "suite.scenarios")
    assert specs[0].seeds == (3, 4) and specs[1].seeds is None
    for bad in ([], [1, 1], ["x"], "0"):
        with pytest.raises(ConfigError, match=r"suite.scenarios\[0\].seeds"):
            scenario_specs([{"name": "tiny", "seeds": bad}], "suite.scenarios")
