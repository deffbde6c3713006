"""The events journal and webhooks through the real daemon, with SIGKILLs.

A follower (``sir-convert-a-lot events --follow``) starts before the run and a
recording webhook receiver on loopback is down for the first part of it; the
daemon is SIGKILLed while jobs are between their sidecar and their final event
(fault delays widen those windows), restarted, and finally drains. Then:

* the follower saw every seq from 1 on, in order, without a gap, exactly the
  journal's lines, and every input's final event exactly once, naming the
  sidecar that is there;
* the receiver got every final event, signed; a duplicate carries the same
  ``event_id`` and the same body.

Short mode: 40 files, 2 kills. Long mode (``SIR_CONVERT_A_LOT_TEST_LONG=1``):
200 files, 8 kills. Retention through the daemon: a failed input and its error
sidecar pruned together. A folder's own webhook (``notify_url``): its jobs'
final events go to it and to the profile's URL; a URL the profile does not
allow fails the job ``options_invalid``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chaos_support import FaultyDaemon, audit, long_mode, make_inputs, phases
from tests.fixtures.daemon import free_port

pytestmark = pytest.mark.e2e

DELAYS = {"archive": 0.05, "announced": 0.05, "publish_output": 0.02}
SECRET = b"s3cret-for-the-test"


class Receiver:
    """A loopback webhook receiver; the first POST it gets is answered 503."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.posts: list[tuple[str, bytes, bool]] = []  # event id, body, signature ok
        self.refused = 0
        self.paths: list[str] = []  # the request path of each accepted POST
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                signed = self.headers.get("X-Sir-Convert-A-Lot-Signature") == expected
                with receiver.lock:
                    refuse = receiver.refused == 0
                    if refuse:
                        receiver.refused += 1
                    else:
                        event_id = self.headers.get("X-Sir-Convert-A-Lot-Event-Id", "")
                        receiver.posts.append((event_id, body, signed))
                        receiver.paths.append(self.path)
                self.send_response(503 if refuse else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def ids(self) -> set[str]:
        with self.lock:
            return {i for i, _, _ in self.posts}


def _journal(root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((root / "events").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def _finals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] in ("job_succeeded", "job_failed", "job_reused")]


def _drop(staging: Path, inbox: Path, relatives: list[str]) -> None:
    for rel in relatives:
        dest = inbox / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, dest)


def _wait(condition: Any, timeout: float, daemon: FaultyDaemon, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        time.sleep(0.01)
    raise AssertionError(f"{what} not within {timeout} s\n{daemon.tail()}")


def _kill(daemon: FaultyDaemon) -> None:
    assert daemon.kill(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while daemon.own_processes() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.timeout(1800 if long_mode() else 400)
def test_follower_and_webhooks_see_every_final_event_once_across_sigkills(
    tmp_path: Path,
) -> None:
    long = long_mode()
    total, kills = (200, 8) if long else (40, 2)
    seed = random.randrange(1 << 30)
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    receiver = Receiver(free_port())  # down (nothing listens) until after the first kill
    daemon = FaultyDaemon(
        tmp_path,
        extra_config=(
            "max_attempts = 5\n[profiles.eval.notify]\n"
            f'url = "http://127.0.0.1:{receiver.port}/hook"\n'
            f'secret_file = "{secret}"\nbackoff_max_seconds = 1\ntimeout_seconds = 5\n'
        ),
        faults={"delay": DELAYS},
    )
    staging = tmp_path / "staging"
    originals = make_inputs(staging, total, seed)
    pending = list(originals)
    random.Random(seed).shuffle(pending)
    batch = -(-total // (kills + 1))
    follow_out = tmp_path / "follower.jsonl"
    follower = subprocess.Popen(
        [sys.executable, "-m", "daemon", "events", "--follow", "--since", "0"],
        env=daemon.env(),
        stdout=follow_out.open("wb"),
        stderr=subprocess.PIPE,
    )
    killed_in: list[set[str]] = []
    kill_times: list[datetime] = []
    try:
        for round_ in range(kills):
            _drop(staging, daemon.inbox, pending[:batch])
            pending = pending[batch:]
            before = len(_finals(_journal(daemon.root)))
            daemon.start(wait_ready=False)
            # Kill once some jobs of this start finished, while another sits between
            # its sidecar and its event, or its event and its archive.
            _wait(
                lambda before=before: len(_finals(_journal(daemon.root))) >= before + 3,
                240,
                daemon,
                "three final events",
            )
            deadline = time.monotonic() + 20
            while "archive" not in phases(daemon.root) and time.monotonic() < deadline:
                time.sleep(0.003)
            killed_in.append(phases(daemon.root))
            _kill(daemon)
            kill_times.append(datetime.now(UTC))
            if round_ == 0:
                receiver.start()
        _drop(staging, daemon.inbox, pending)
        daemon.start(wait_ready=False)
        _wait(
            lambda: len(_finals(_journal(daemon.root))) >= total and not any(daemon.jobs.iterdir()),
            600 if long else 240,
            daemon,
            "every final event",
        )
        finals = _finals(_journal(daemon.root))
        _wait(
            lambda: receiver.ids() >= {e["event_id"] for e in finals},
            60,
            daemon,
            "every final event at the receiver",
        )
        sse = _get_text(daemon.base_url + "/events?since=0&follow=0")
        sse_ids = [int(line[4:]) for line in sse.splitlines() if line.startswith("id: ")]
        deliveries = daemon.metric("sir_convert_a_lot_webhook_deliveries_total")
        assert daemon.stop() == 0
        journal = _journal(daemon.root)
        _wait_file_has(follow_out, journal[-1]["seq"], 30)
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        receiver.stop()

    # The data root is whole, and the journal agrees with it.
    result = audit(daemon.root, originals)
    assert not result.problems, result.problems
    seqs = [e["seq"] for e in journal]
    assert seqs == list(range(1, len(journal) + 1)), "seq grows by one, across restarts"
    assert len({e["event_id"] for e in journal}) == len(journal), "one seq per event"
    assert sse_ids == [s for s in seqs if s <= sse_ids[-1]], "GET /events gives the same"
    finals = _finals(journal)
    by_input: dict[str, list[dict[str, Any]]] = {}
    for event in finals:
        by_input.setdefault(event["input"], []).append(event)
    assert sorted(by_input) == sorted(originals)
    assert all(len(v) == 1 for v in by_input.values()), "one final event per input"
    claimed_at = {e["job_id"]: e["seq"] for e in journal if e["kind"] == "job_claimed"}
    for event in finals:
        assert claimed_at[event["job_id"]] < event["seq"], event
        rel = event["input"]
        if event["kind"] == "job_succeeded":
            car = result.succeeded[rel]
            assert event["path"] == f"outbox/{car['output']['path']}"
        else:
            assert event["code"] == result.failed[rel], event
        assert (daemon.root / event["sidecar"]).is_file(), event

    # The follower saw exactly the journal, without a gap.
    followed = [json.loads(line) for line in follow_out.read_text().splitlines()]
    assert not [f for f in followed if "gap" in f]
    assert followed == journal

    # The receiver got every final event; duplicates only with their id and body.
    bodies: dict[str, set[bytes]] = {}
    for event_id, body, signed in receiver.posts:
        assert signed, "every POST carries the HMAC of its body"
        bodies.setdefault(event_id, set()).add(body)
    assert set(bodies) == {e["event_id"] for e in finals}
    assert all(len(b) == 1 for b in bodies.values()), "a duplicate is the same event"
    for event_id, (body,) in ((k, tuple(v)) for k, v in bodies.items()):
        assert json.loads(body)["event_id"] == event_id
    duplicates = len(receiver.posts) - len(bodies)
    # Final events a later daemon wrote for jobs claimed before a kill (recovery).
    when = {e["event_id"]: datetime.fromisoformat(e["at"]) for e in journal}
    claimed_when = {e["job_id"]: when[e["event_id"]] for e in journal if e["kind"] == "job_claimed"}
    recovered = sum(
        1
        for e in finals
        if any(claimed_when[e["job_id"]] < k < when[e["event_id"]] for k in kill_times)
    )
    print(
        f"\nevents {len(journal)}, final {len(finals)}, kills {kills} "
        f"(phases at the kills: {killed_in}), webhook posts {len(receiver.posts)} "
        f"(+1 refused), duplicates {duplicates}, finals written after a restart {recovered}, "
        f"last daemon's deliveries metric {deliveries}"
    )


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def _wait_file_has(path: Path, seq: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if f'"seq":{seq},' in text:
            return
        time.sleep(0.1)
    raise AssertionError(f"the follower never printed seq {seq}")


def test_retention_prunes_failed_pairs_through_the_daemon(tmp_path: Path) -> None:
    """failed_days of ~2 s: a failed input goes with its error sidecar, after its
    job_failed event, with a pruned event; no worker is needed (no route), so the
    test does not wait for a warm lane."""
    daemon = FaultyDaemon(
        tmp_path,
        extra_config=(
            "[profiles.eval.retention]\nfailed_days = 0.00003\nsweep_interval_seconds = 0.5\n"
        ),
    )
    bad = daemon.inbox / "to-md" / "sub" / "bad.xyz"
    bad.parent.mkdir(parents=True)
    bad.write_text("no route converts this")
    failed = daemon.failed / "to-md" / "sub"
    try:
        daemon.start(wait_ready=False)
        assert daemon.error("to-md/sub/bad.xyz", timeout=120)["error"]["code"] == (
            "unsupported_route"
        )
        _wait(
            lambda: (
                any(e["kind"] == "pruned" for e in _journal(daemon.root))
                and not (failed / "bad.xyz").exists()
                and not (failed / "bad.xyz.error.json").exists()
            ),
            30,
            daemon,
            "the failed pair pruned",
        )
        assert daemon.metric("sir_convert_a_lot_files_pruned_total", folder="failed") == 1
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
    assert failed.is_dir(), "folders stay"
    journal = _journal(daemon.root)
    pruned = [e for e in journal if e["kind"] == "pruned"]
    assert [(e["path"], e["sidecar"], e["code"]) for e in pruned] == [
        ("failed/to-md/sub/bad.xyz", "failed/to-md/sub/bad.xyz.error.json", "failed")
    ]
    failed_event = next(e for e in journal if e["kind"] == "job_failed")
    assert failed_event["code"] == "unsupported_route"
    assert failed_event["seq"] < pruned[0]["seq"]


def test_a_folder_webhook_gets_its_jobs_and_a_foreign_url_is_refused(tmp_path: Path) -> None:
    """No worker needed: the jobs fail (no route, or options_invalid before any
    conversion), which is enough to follow their final events."""
    profile_hook, folder_hook = Receiver(free_port()), Receiver(free_port())
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    hooks = f"http://127.0.0.1:{folder_hook.port}/hooks/"
    daemon = FaultyDaemon(
        tmp_path,
        extra_config=(
            "[profiles.eval.notify]\n"
            f'url = "http://127.0.0.1:{profile_hook.port}/all"\n'
            f'allowed_urls = ["{hooks}"]\n'
            f'secret_file = "{secret}"\nbackoff_max_seconds = 0.5\n'
        ),
    )
    team = daemon.inbox / "to-md" / "team"
    rogue = daemon.inbox / "to-pdf" / "rogue"
    team.mkdir(parents=True)
    rogue.mkdir(parents=True)
    (team / ".sir-convert-a-lot.toml").write_text(f'[options]\nnotify_url = "{hooks}team"\n')
    foreign = f"http://127.0.0.1:{profile_hook.port}/elsewhere"
    (rogue / ".sir-convert-a-lot.toml").write_text(f'[options]\nnotify_url = "{foreign}"\n')
    (team / "a.xyz").write_text("no route converts this")
    (rogue / "b.md").write_text("# never converted\n")
    (daemon.inbox / "to-md" / "c.xyz").write_text("no route converts this")
    profile_hook.start()
    folder_hook.start()
    try:
        daemon.start(wait_ready=False)
        error = daemon.error("to-pdf/rogue/b.md", timeout=120)["error"]
        assert error["code"] == "options_invalid"
        assert foreign in error["message"] and "allowed_urls" in error["message"]
        _wait(lambda: len(profile_hook.ids()) == 3, 60, daemon, "3 events at the profile URL")
        _wait(lambda: len(folder_hook.ids()) == 1, 60, daemon, "1 event at the folder URL")
        time.sleep(1.0)  # nothing else arrives
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        profile_hook.stop()
        folder_hook.stop()
    finals = {e["input"]: e for e in _finals(_journal(daemon.root))}
    assert finals["to-md/team/a.xyz"]["notify_url"] == f"{hooks}team"
    assert finals["to-pdf/rogue/b.md"]["notify_url"] is None
    assert finals["to-md/c.xyz"]["notify_url"] is None
    assert profile_hook.ids() == {e["event_id"] for e in finals.values()}
    assert folder_hook.ids() == {finals["to-md/team/a.xyz"]["event_id"]}
    assert folder_hook.paths == ["/hooks/team"]
    assert all(signed for _, _, signed in profile_hook.posts + folder_hook.posts)
    cursors = json.loads((daemon.root / ".state" / "webhook-folder-cursor.json").read_text())
    assert cursors["delivered_seq"] >= finals["to-md/team/a.xyz"]["seq"]
