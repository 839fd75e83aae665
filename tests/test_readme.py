"""README.md documents every ADCLICK_ setting and the two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from adclick.core import settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def setting_classes() -> list[type[settings.Settings]]:
    return [c for c in vars(settings).values() if isinstance(c, type) and issubclass(c, settings.Settings)]


def test_every_setting_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `(ADCLICK_[A-Z0-9_]+)` \|", README, flags=re.M))
    fields = {f"ADCLICK_{name.upper()}" for cls in setting_classes() for name in cls.model_fields}
    assert fields - documented == set(), "settings missing from README's configuration table"
    assert documented - fields == set(), "README documents settings that do not exist"


def test_readme_gives_the_two_setup_commands() -> None:
    assert "make dev" in README and "make test" in README
