"""The typed worker wire: what one end encodes, the other reads back, typed and bounded."""

from __future__ import annotations

import json

import pytest

from converters.base import ConvertOptions, Lane, Limits
from converters.errors import InputTooLarge
from daemon.errors import WorkerCrashed
from daemon.sidecar import MAX_DETAILS_BYTES, error_details
from daemon.wire import (
    MAX_FIELD_CHARS,
    MAX_LINE_BYTES,
    Hello,
    JobReply,
    JobRequest,
    Problem,
    Ready,
    WireError,
    decode,
    encode,
)


def test_a_failed_reply_carries_the_typed_error_with_its_details() -> None:
    sent = JobReply.failed(InputTooLarge("too big", size=10, limit=5))
    got = decode(encode(sent), JobReply)
    assert got.ok is False and got.error is not None
    error = got.error.error()
    assert isinstance(error, InputTooLarge)
    assert (error.code, error.message, error.details) == (
        "input_too_large",
        "too big",
        {
            "size": 10,
            "limit": 5,
        },
    )
    assert not got.retryable


def test_daemon_codes_come_back_as_their_own_type() -> None:
    error = Problem(code="worker_crashed", message="gone").error()
    assert isinstance(error, WorkerCrashed) and error.retryable
    assert Problem(code="no_such_code", message="?").error().code == "converter_failed"


def test_hello_request_and_ready_round_trip() -> None:
    hello = Hello(lane=Lane.GPU, gpu_policy="required", limits=Limits(max_pages=3), fd_channel=7)
    assert decode(encode(hello), Hello) == hello
    job = JobRequest(
        job_id="j",
        source="md",
        target="pdf",
        input_path="/in",
        output_path="/out",
        options=ConvertOptions(ocr="off"),
        drop_fd=True,
    )
    assert decode(encode(job), JobRequest) == job
    ready = Ready(pid=1, problems={"pdf->md": [Problem(code="models_missing", message="m")]})
    back = decode(encode(ready), Ready)
    assert back.problems["pdf->md"][0].code == "models_missing"


@pytest.mark.parametrize(
    "line",
    [b"not json\n", b"[1]\n", b'{"result": 1}\n', b'{"ok": false}\n', b'{"ok": "yes"}\n'],
)
def test_anything_but_a_reply_is_a_wire_error(line: bytes) -> None:
    with pytest.raises(WireError):
        decode(line, JobReply)


def test_every_line_is_cut_to_size() -> None:
    huge = JobReply.failed(InputTooLarge("x" * (4 * MAX_FIELD_CHARS), blob="y" * 10**6))
    line = encode(huge)
    assert len(line) <= MAX_LINE_BYTES
    got = decode(line, JobReply)
    assert got.error is not None and len(got.error.message) < 2 * MAX_FIELD_CHARS
    many = JobReply(ok=True, warnings=[f"w{i}" * 2000 for i in range(400)])
    assert len(encode(many)) <= MAX_LINE_BYTES
    assert decode(encode(many), JobReply).ok


def test_sidecar_details_are_plain_json_and_bounded() -> None:
    assert error_details({}) is None
    assert error_details({"size": 3, "path": object()}) is not None
    weird = error_details({"when": {1, 2}.__class__})
    assert weird is not None and isinstance(weird["when"], str)
    big = error_details({f"k{i}": "v" * 1000 for i in range(100)})
    assert big is not None and big["truncated"] is True
    assert len(json.dumps(big).encode()) <= MAX_DETAILS_BYTES
