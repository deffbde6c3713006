"""A folder's ``notify_url`` (``.sir-convert-a-lot.toml``): allowed only as the
profile's ``[notify] allowed_urls`` say (exact, or a prefix ending in ``/``);
anything else is ``options_invalid`` with a message naming the file and URL.
The URL is decided at the claim and kept in the job's record across a restart."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from converters.base import ConvertOptions, Limits
from converters.errors import OptionsInvalid
from daemon.automation_settings import NotifySettings
from daemon.config import load_settings
from daemon.events import segment_files
from daemon.jobs import JobRecord
from daemon.options import OPTIONS_FILE, resolve_options
from daemon.service import Service

pytestmark = pytest.mark.unit

NOTIFY = NotifySettings(
    allowed_urls=("http://127.0.0.1:9000/hooks/", "https://ci.example.test/exact")
)


def test_allowed_urls_are_exact_or_a_prefix_ending_in_a_slash() -> None:
    assert NOTIFY.allows("http://127.0.0.1:9000/hooks/team-a")
    assert NOTIFY.allows("http://127.0.0.1:9000/hooks/")
    assert NOTIFY.allows("https://ci.example.test/exact")
    assert not NOTIFY.allows("https://ci.example.test/exact/more")
    assert not NOTIFY.allows("https://ci.example.test/exactly")
    assert not NOTIFY.allows("http://127.0.0.1:9000/hooksx")
    assert not NOTIFY.allows("http://127.0.0.1:90001/hooks/x")
    # Dot segments would leave the prefix once the client normalises the path.
    assert not NOTIFY.allows("http://127.0.0.1:9000/hooks/../admin")
    assert not NOTIFY.allows("http://127.0.0.1:9000/hooks/%2E%2e/admin")
    assert not NOTIFY.allows("ftp://127.0.0.1:9000/hooks/x")
    assert not NotifySettings().allows("http://127.0.0.1:9000/hooks/x")
    with pytest.raises(ValueError, match="allowed_urls"):
        NotifySettings(allowed_urls=("file:///etc/passwd",))


def _resolve(inbox: Path, relative: str, tmp: Path, notify: NotifySettings = NOTIFY) -> object:
    rel = PurePosixPath(relative)
    levels = [os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for part in rel.parts[:-1]:
            levels.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=levels[-1]))
        return resolve_options(
            ConvertOptions(), levels, rel, tmp / "copies", Limits(), notify=notify
        )
    finally:
        for fd in levels:
            os.close(fd)


def test_the_deepest_allowed_notify_url_is_returned_beside_the_options(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "to-md" / "team").mkdir(parents=True)
    (inbox / "to-md" / OPTIONS_FILE).write_text(
        '[options]\nnotify_url = "https://ci.example.test/exact"\nocr = "off"\n'
    )
    (inbox / "to-md" / "team" / OPTIONS_FILE).write_text(
        '[options]\nnotify_url = "http://127.0.0.1:9000/hooks/team"\n'
    )
    options, url = _resolve(inbox, "to-md/team/a.pdf", tmp_path)  # type: ignore[misc]
    assert url == "http://127.0.0.1:9000/hooks/team"
    assert options.ocr == "off"
    assert "notify_url" not in options.model_dump()  # never reaches a worker or the reuse key
    _, url = _resolve(inbox, "to-md/b.pdf", tmp_path)  # type: ignore[misc]
    assert url == "https://ci.example.test/exact"
    _, url = _resolve(inbox, "c.pdf", tmp_path)  # type: ignore[misc]
    assert url is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"http://127.0.0.1:9000/elsewhere"', "is not allowed by the profile"),
        ('"http://127.0.0.1:9000/hooks/../admin"', "is not allowed by the profile"),
        ("42", "notify_url must be a URL"),
    ],
)
def test_a_notify_url_not_allowed_is_options_invalid(
    tmp_path: Path, value: str, message: str
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "to-md").mkdir(parents=True)
    (inbox / "to-md" / OPTIONS_FILE).write_text(f"[options]\nnotify_url = {value}\n")
    with pytest.raises(OptionsInvalid, match=message) as caught:
        _resolve(inbox, "to-md/a.pdf", tmp_path)
    assert caught.value.code == "options_invalid"
    assert "to-md/.sir-convert-a-lot.toml" in caught.value.message
    # A profile without allowed_urls allows no folder URL at all.
    (inbox / "to-md" / OPTIONS_FILE).write_text('[options]\nnotify_url = "http://127.0.0.1:9/x"\n')
    with pytest.raises(OptionsInvalid, match="allowed_urls"):
        _resolve(inbox, "to-md/a.pdf", tmp_path, NotifySettings())


def _service(tmp_path: Path) -> Service:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.eval]\ndata_root = "{tmp_path / "root"}"\nhttp_port = 0\n'
        '[profiles.eval.notify]\nallowed_urls = ["http://127.0.0.1:9000/hooks/"]\n'
    )
    environ = {"HOME": str(tmp_path), "SIR_CONVERT_A_LOT_SERVICE_REVISION": "unit"}
    settings, profile = load_settings(config_path=config, profile="eval", environ=environ)
    service = Service(settings, profile, journal=True)
    service.root.create()
    service.root.adopt("eval")
    return service


async def test_the_url_decided_at_the_claim_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed, then the daemon dies and the options file changes: recovery
    keeps the URL of the claim, and the job's final event carries it."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    first = _service(tmp_path)
    folder = first.root.inbox / "to-md" / "team"
    folder.mkdir(parents=True)
    (folder / OPTIONS_FILE).write_text(
        '[options]\nnotify_url = "http://127.0.0.1:9000/hooks/team"\n'
    )
    (folder / "a.xyz").write_text("no route converts this")
    job = first.lifecycle.claim(folder / "a.xyz", datetime.now(UTC))
    assert job is not None
    assert job.record.notify_url == "http://127.0.0.1:9000/hooks/team"
    on_disk = JobRecord.model_validate_json((job.folder / "job.json").read_bytes())
    assert on_disk.notify_url == "http://127.0.0.1:9000/hooks/team"
    job.release()
    assert first.journal is not None
    first.journal.close()  # the daemon dies here

    (folder / OPTIONS_FILE).write_text(
        '[options]\nnotify_url = "http://127.0.0.1:9000/hooks/other"\n'
    )
    second = _service(tmp_path)
    try:
        (recovered,) = second.lifecycle.recover()
        assert recovered.record.notify_url == "http://127.0.0.1:9000/hooks/team"
        await second.lifecycle.process(recovered)  # fails: no route for .xyz
    finally:
        assert second.journal is not None
        second.journal.close()
    finals = [
        json.loads(line)
        for _, path in segment_files(second.root.events)
        for line in path.read_text().splitlines()
        if '"job_failed"' in line
    ]
    assert [(e["code"], e["notify_url"]) for e in finals] == [
        ("unsupported_route", "http://127.0.0.1:9000/hooks/team")
    ]
