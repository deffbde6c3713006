"""The docs stay true: every setting and every error code is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

from converters.base import ConvertOptions, Limits
from daemon.config import (
    EnvOverrides,
    EventsSettings,
    NotifySettings,
    ProfileSettings,
    RetentionSettings,
)
from daemon.errors import known_codes
from daemon.lane_settings import LaneSettings
from daemon.sidecar import Sidecar

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_in_configuration_md() -> None:
    text = (DOCS / "configuration.md").read_text()
    for model in (
        ProfileSettings,
        LaneSettings,
        ConvertOptions,
        Limits,
        EventsSettings,
        NotifySettings,
        RetentionSettings,
    ):
        for name in model.model_fields:
            if name == "name":
                continue
            assert f"`{name}`" in text, f"{model.__name__}.{name} is not documented"
    for name in EnvOverrides.model_fields:
        assert f"SIR_CONVERT_A_LOT_{name.upper()}" in text


def test_every_error_code_is_documented() -> None:
    text = "".join(p.read_text() for p in DOCS.glob("*.md"))
    for code in known_codes():
        assert f"`{code}`" in text, f"error code {code} is not documented"


def test_published_sidecar_schema_matches_the_model() -> None:
    published = json.loads((DOCS / "sidecar.schema.json").read_text())
    assert published == Sidecar.model_json_schema()


def test_published_events_schema_matches_the_model() -> None:
    from daemon.events import Event

    published = json.loads((DOCS / "events.schema.json").read_text())
    assert published == Event.model_json_schema()


def test_every_event_kind_and_field_is_documented() -> None:
    from daemon.events import Event, EventKind

    text = (DOCS / "automation.md").read_text()
    for kind in EventKind:
        assert f"`{kind}`" in text, f"event kind {kind} is not in docs/automation.md"
    for name in Event.model_fields:
        assert f"`{name}`" in text, f"event field {name} is not in docs/automation.md"


def test_every_sidecar_field_is_described() -> None:
    text = (DOCS / "sidecar.md").read_text()
    for name in Sidecar.model_fields:
        assert re.search(rf"`{name}`", text), name


def test_every_warning_code_is_in_sidecar_md() -> None:
    from converters.warning_codes import MEANINGS, WarningCode

    text = (DOCS / "sidecar.md").read_text()
    documented = set(
        re.findall(r"^\| `([a-z_]+)` \| ", text.split("## Warning codes")[1].split("##")[0], re.M)
    )
    assert documented == {code.value for code in WarningCode}
    assert set(MEANINGS) == set(WarningCode)
