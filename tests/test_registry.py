import pytest

from benchmark.contract.registry import Registry, RegistryError


def test_lazy_target_is_imported_on_first_get_only():
    reg = Registry("widget")
    reg.register("ordered", "collections:OrderedDict")
    assert reg.names() == ["ordered"]
    from collections import OrderedDict

    assert reg.get("ordered") is OrderedDict


def test_duplicate_names_are_refused_unless_forced():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a", 2)
    reg.register("a", 2, force=True)
    assert reg.get("a") == 2


def test_unknown_name_suggests_close_match_and_lists_valid():
    reg = Registry("defense")
    reg.register("she_lora", 1)
    reg.register("plain_lora", 2)
    with pytest.raises(RegistryError) as info:
        reg.get("she-lora")
    assert "Did you mean 'she_lora'?" in str(info.value)
    assert "Valid: plain_lora, she_lora" in str(info.value)


def test_names_must_be_snake_case_and_targets_well_formed():
    reg = Registry("attack")
    with pytest.raises(RegistryError, match="snake_case"):
        reg.register("Bad-Name", 1)
    with pytest.raises(RegistryError, match="module:attr"):
        reg.register("lazy", "no_colon_here")


def test_listing_defenses_does_not_import_heavy_modules():
    import subprocess
    import sys

    code = ("import sys; from defenses import DEFENSES; from attacks import ATTACKS; DEFENSES.names(); ATTACKS.names();"
            "print('tenseal' in sys.modules, 'opacus' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]
