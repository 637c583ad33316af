"""A hostile DICOMweb server: wrong content type, a non-DICOM part, an oversized answer, UIDs that try to be
paths. Each is that study's (or instance's) error row, the good study is still scored, and nothing is
written outside the output folder. Also: credentials come from the environment or a file, never logged."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pydicom
import pytest
from test_score import make_checkpoint

from medclass.cli import ExitCode, main
from medclass.errors import ConfigError
from medclass.pacs import Connection, DicomNode, check_uid, is_uid, load_auth, output_uid, parse_query
from medclass.score import read_scores

BOUNDARY = "b0undary"
GOOD, HTML, NOT_DICOM, HUGE, PATHS = "1.2.3.5", "1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"
STREAMED, HUNG = "1.2.3.6", "1.2.3.7"
TOKEN = "tok-Zq9-secret"
RELEASE = threading.Event()  # lets the hung handler go when a test ends


def _study(uid: str) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}, "00201208": {"vr": "IS", "Value": [1]}}


def _instance(study: str, series: str, sop: str) -> dict:
    return {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1.1"]},
    }


def _multipart(*parts: bytes) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


class Hostile(BaseHTTPRequestHandler):
    good: bytes = b""
    studies: tuple[str, ...] = (HTML, NOT_DICOM, HUGE, PATHS, GOOD)
    seen_auth: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, ctype: str, body: bytes, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        Hostile.seen_auth.append(self.headers.get("Authorization", ""))
        parts = urlsplit(self.path).path.strip("/").split("/")[1:]  # after the "dw" root
        if parts == ["studies"]:
            return self._send(
                200,
                "application/dicom+json",
                json.dumps([_study(u) for u in self.studies]).encode(),
            )
        study = parts[1]
        if parts[2:] == ["instances"]:
            if study == PATHS:
                found = [
                    _instance(study, "1.2.3.4.1", "../../../evil"),
                    _instance(study, "x/../..", "1.2.3.4.1.1"),
                ]
            else:
                found = [_instance(study, f"{study}.1", f"{study}.1.1")]
            return self._send(200, "application/dicom+json", json.dumps(found).encode())
        if study == HTML:
            return self._send(200, "text/html", b"<html>login page</html>")
        if study == NOT_DICOM:
            return self._send(
                200,
                f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                _multipart(b"%PDF-1.4 not dicom at all"),
            )
        if study == STREAMED:  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.send_header(
                "Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
            )
            self.end_headers()
            try:
                for _ in range(64):  # 4 MiB in 64 KiB writes, against a 1 MB cap
                    self.wfile.write(b"y" * (64 << 10))
            except OSError:  # the client hung up once it had enough: that is the point
                pass
            return None
        if study == HUNG:  # headers, then nothing for longer than the client's timeout
            self.send_response(200)
            self.send_header(
                "Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
            )
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.flush()
            RELEASE.wait(20)
            return None
        if study == HUGE:
            return self._send(
                200,
                f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                b"x" * 1024,
                length=50 << 20,
            )
        return self._send(200, f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', _multipart(self.good))  # fmt: skip


def _good_instance(dicom_samples: Path) -> bytes:
    ds = pydicom.dcmread(dicom_samples / "highdicom" / "dx_image.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = GOOD, f"{GOOD}.1", f"{GOOD}.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@contextlib.contextmanager
def _serve(handler: type[Hostile], ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """``handler`` on a free loopback port (TLS with ``ssl_context``); yields the DICOMweb root URL."""
    RELEASE.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{server.server_address[1]}/dw"
    finally:
        RELEASE.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def hostile(dicom_samples: Path):
    Hostile.good, Hostile.seen_auth = _good_instance(dicom_samples), []
    with _serve(Hostile) as url:
        yield url


@pytest.mark.slow
def test_hostile_answers_are_error_rows_never_a_crash_nor_a_file_outside(
    hostile: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    ckpt = make_checkpoint(tmp_path / "ck")
    secret = tmp_path / "secret"
    secret.write_text(f"bearer {TOKEN}\n")
    monkeypatch.chdir(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out" / "scores.csv"
    rc = main(["-v", "score", "--checkpoint", str(ckpt), "--dicomweb", hostile, "--out", str(out), "--workers", "0",
               "--no-progress", "--credentials-file", str(secret), "--max-response-mb", "1", "--retries", "1"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == ExitCode.PARTIAL, captured.err
    rows = read_scores(out)
    by_study = {r["path"].split("/studies/")[1].split("/")[0].split("#")[0]: r for r in rows}
    assert set(by_study) == {GOOD, HTML, NOT_DICOM, HUGE, PATHS}
    assert not by_study[GOOD]["error"] and by_study[GOOD]["prob:NORMAL"] != ""
    assert "multipart/related" in by_study[HTML]["error"]  # the wrong content type, named
    assert "InvalidDicomError" in by_study[NOT_DICOM]["error"] or "DICOM" in by_study[NOT_DICOM]["error"]
    assert "bytes" in by_study[HUGE]["error"]
    assert "malformed SOPInstanceUID" in by_study[PATHS]["error"] or "malformed" in by_study[PATHS]["error"]
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "out") for p in created), sorted(map(str, created))
    assert not any("evil" in str(p) for p in tmp_path.rglob("*"))
    assert set(Hostile.seen_auth) == {f"Bearer {TOKEN}"}  # sent on every request ...
    assert TOKEN not in captured.out + captured.err  # ... and never shown
    assert TOKEN not in out.read_text()


class Slow(Hostile):
    studies = (STREAMED, HUNG, GOOD)


@pytest.mark.slow
def test_a_streamed_oversized_answer_and_a_hung_server_are_bounded(
    dicom_samples: Path, tmp_path: Path
) -> None:
    """No Content-Length and 4 MiB against a 1 MB cap: that study's error row after at most ~1 MB read; a
    server that sends headers and then nothing: the study is reported unreachable after the timeout (and its
    retry), not waited on for ever; the good study is scored either way."""
    Slow.good = _good_instance(dicom_samples)
    ckpt = make_checkpoint(tmp_path / "ck")
    out = tmp_path / "out" / "scores.csv"
    with _serve(Slow) as url:
        t0 = time.monotonic()
        rc = main(["-q", "score", "--checkpoint", str(ckpt), "--dicomweb", url, "--out", str(out), "--workers", "0",
                   "--no-progress", "--max-response-mb", "1", "--timeout", "1", "--retries", "1"])  # fmt: skip
        took = time.monotonic() - t0
    assert rc != ExitCode.OK
    assert took < 60, took  # timeout 1 s, two attempts, backoff: seconds, not the server's 20 s stall
    rows = {r["path"].split("/studies/")[1].split("/")[0].split("#")[0]: r for r in read_scores(out)}
    assert not rows[GOOD]["error"] and rows[GOOD]["prob:NORMAL"] != ""
    assert "bytes" in rows[STREAMED]["error"]
    assert HUNG not in rows  # unreachable is not a verdict: no row, so that --resume tries it again


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        msg = "openssl not installed (scripts/system-deps.sh installs it; it makes the test certificate)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {msg}", pytrace=False)
        pytest.skip(msg)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return cert, key


class GoodOnly(Hostile):
    studies = (GOOD,)


@pytest.mark.slow
def test_tls_is_verified_by_default_and_a_ca_bundle_makes_it_trusted(
    dicom_samples: Path, tmp_path: Path, capsys
) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    GoodOnly.good = _good_instance(dicom_samples)
    ckpt = make_checkpoint(tmp_path / "ck")
    with _serve(GoodOnly, context) as url:
        assert url.startswith("https://")
        out = tmp_path / "untrusted" / "scores.csv"
        rc = main(["score", "--checkpoint", str(ckpt), "--dicomweb", url, "--out", str(out), "--workers", "0",
                   "--no-progress", "--retries", "1", "--timeout", "5"])  # fmt: skip
        err = capsys.readouterr().err
        assert rc != ExitCode.OK
        assert "certificate not trusted" in err and "--ca-bundle" in err, err  # says what to do
        assert not out.exists() or not any(not r["error"] for r in read_scores(out))  # nothing scored
        out = tmp_path / "trusted" / "scores.csv"
        rc = main(["-q", "score", "--checkpoint", str(ckpt), "--dicomweb", url, "--out", str(out), "--workers", "0",
                   "--no-progress", "--ca-bundle", str(cert)])  # fmt: skip
    assert rc == ExitCode.OK, capsys.readouterr().err
    rows = read_scores(out)
    assert len(rows) == 1 and not rows[0]["error"] and rows[0]["prob:NORMAL"] != ""


def test_credentials_only_from_environment_or_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="credentials in the URL are refused"):
        Connection("https://user:pw@pacs.example.org/dicom-web")
    assert load_auth(env={"MEDCLASS_PACS_TOKEN": "t"}) == "t"
    assert load_auth(env={"MEDCLASS_PACS_USER": "u", "MEDCLASS_PACS_PASSWORD": "p"}) == ("u", "p")
    assert load_auth(env={}) is None
    f = tmp_path / "c"
    f.write_text("basic alice:pa:ss\n")
    assert load_auth(f, env={"MEDCLASS_PACS_TOKEN": "ignored"}) == ("alice", "pa:ss")
    f.write_text("alice hunter2")
    with pytest.raises(ConfigError) as exc:
        load_auth(f, env={})
    assert "hunter2" not in str(exc.value)  # a malformed secret is not quoted back
    with pytest.raises(ConfigError, match="not an http"):
        Connection("ftp://pacs/dicom-web")


def test_derived_uids_are_stable_valid_and_distinct() -> None:
    a = output_uid("1.2.3", 0, "ab" * 32, "saliency-sc")
    assert a == output_uid("1.2.3", 0, "ab" * 32, "saliency-sc") and is_uid(a) and len(a) <= 64
    others = {
        output_uid("1.2.3", 1, "ab" * 32, "saliency-sc"),
        output_uid("1.2.4", 0, "ab" * 32, "saliency-sc"),
        output_uid("1.2.3", 0, "cd" * 32, "saliency-sc"),
        output_uid("1.2.3", 0, "ab" * 32, "explain-sr"),
    }
    assert a not in others and len(others) == 4
    for bad in ("../../x", "1.2.03", "1..2", "1.2.3" + ".4" * 40, "", None, "1.2.3\n"):
        assert not is_uid(bad)
        with pytest.raises(Exception, match="malformed"):
            check_uid(bad, "UID")


def test_query_and_node_parsing() -> None:
    assert parse_query(["ModalitiesInStudy=CR", "StudyDate=20260101-20260131"]) == {
        "ModalitiesInStudy": "CR",
        "StudyDate": "20260101-20260131",
    }
    for bad in (["ModalitiesInStudy"], ["NoSuchKeyword=1"], ["=x"]):
        with pytest.raises(ConfigError):
            parse_query(bad)
    node = DicomNode.parse("ORTHANC@pacs.example.org:4242")
    assert (node.aet, node.host, node.port) == ("ORTHANC", "pacs.example.org", 4242)
    for bad in ("pacs:4242", "A@h:0", "A@h:99999", "WAYTOOLONGAETITLE17@h:1"):
        with pytest.raises(ConfigError):
            DicomNode.parse(bad)
