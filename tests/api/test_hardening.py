"""Hardening of ``imsearch serve``, through a real server on a loopback port (real SQLite, FAISS, uvicorn).

The reproductions of issue 16, each a regression test:

* an indexed file swapped for a symbolic link to a file outside the roots (or for other
  content, or a FIFO) is not served: 404/409 on the original, the thumbnail and box search,
  and no byte of the outside file (it starts with ``TOPSECRET``) in any response or log line;
* request bodies are counted as they stream: a chunked 600 MiB upload is answered 413 at
  the limit, the server's memory does not grow, no temporary file is left; an
  unauthenticated write is refused before its body is sent;
* non-finite numbers (``NaN``, ``Infinity``, ``1e400``) on every JSON route and in forms: 422;
* ``/original`` answers the right ``Content-Type`` right after start-up; a read-only
  server lists jobs; ``X-Forwarded-For`` is believed from configured proxies only;
* ``/docs`` and ``/`` load in Chromium with every non-loopback request aborted.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest

from tests.api.conftest import API_KEY, build_collection
from tests.imagefactory import CALTECH

REPO = Path(__file__).resolve().parents[2]
SECRET_MARK = b"TOPSECRET"
LEAK = "TOPSECRE"
KEY = {"X-API-Key": API_KEY}
MIB = 1024 * 1024
LIBRARY = ["Faces/image_0001.jpg", "laptop/image_0001.jpg", "elephant/image_0002.jpg"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    allowed: Path
    outside: Path
    tmpdir: Path
    first_original: tuple[int, str]  # (status, Content-Type) of the first request after start-up

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    url: str, method: str = "GET", *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def post_json(url: str, payload: Any, *, key: bool = False) -> tuple[int, dict[str, str], bytes]:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {"Content-Type": "application/json", **(KEY if key else {})}
    return request(url, "POST", body=text.encode(), headers=headers)


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None, boundary: str = "hardening0boundary") -> bytes:
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if file is not None:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts.append(head.encode() + file[1] + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def post_form(url: str, fields: dict[str, str], file: tuple[str, bytes] | None, *, key: bool = False) -> Any:
    headers = {"Content-Type": "multipart/form-data; boundary=hardening0boundary", **(KEY if key else {})}
    return request(url, "POST", body=multipart(fields, file), headers=headers)


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int, kind: str | None = None) -> Any:
    assert status == expected, body[:500]
    assert headers["content-type"] == "application/problem+json", headers
    doc = json.loads(body, parse_constant=_not_json)  # strict JSON: no NaN or Infinity echoed back
    assert doc["status"] == expected and doc["detail"], doc
    if kind is not None:
        assert doc["type"] == f"tag:imsearch,2025:{kind}", doc
    return doc


def _not_json(constant: str) -> Any:
    raise AssertionError(f"the response holds {constant}, which JSON cannot")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"imsearch serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/api/v1/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"imsearch serve did not answer on {url} within {timeout} s")


def start_server(data_dir: Path, log: Path, *flags: str, env: dict[str, str]) -> tuple[str, int, Any]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMSEARCH_")}
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--device", "cpu", "--log-level", "info", *flags],
        cwd=REPO, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT,
    )
    out.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
    except BaseException:
        stop(proc)
        raise
    return url, port, proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``imsearch serve`` over 3 photos under its only allowed root, TMPDIR in a folder of its own."""
    root = tmp_path_factory.mktemp("hardening")
    allowed, outside, tmpdir, data_dir = root / "allowed", root / "outside", root / "tmp", root / "data"
    for folder in (allowed / "library", allowed / "swap", outside, tmpdir):
        folder.mkdir(parents=True)
    for rel in LIBRARY:
        shutil.copyfile(CALTECH / rel, allowed / "library" / rel.replace("/", "_"))
    build_collection(data_dir, None, small_model, [allowed / "library"])
    env = {"IMSEARCH_API_KEYS": API_KEY, "IMSEARCH_RATE_LIMIT_PER_MINUTE": "0", "TMPDIR": str(tmpdir)}
    log = root / "serve.log"
    url, port, proc = start_server(data_dir, log, "--allowed-root", str(allowed), env=env)
    try:
        # the very first request: before any image was decoded in this process
        first = allowed / "library" / "Faces_image_0001.jpg"
        status, _, body = post_json(url + "/api/v1/search/id", {"image_id": key_of(first), "k": 1})
        assert status == 200, body
        status, headers, _ = request(f"{url}/api/v1/images/{key_of(first)}/original")
        yield Server(url, port, proc, log, data_dir, allowed, outside, tmpdir, (status, headers["content-type"]))
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-5000:]
    assert LEAK not in text


def key_of(path: Path) -> str:
    import hashlib

    from retrieval.store.keys import image_key

    return str(image_key(hashlib.sha256(path.read_bytes()).hexdigest()))


def secret_like(path: Path, size: int) -> None:
    """A file of exactly ``size`` bytes starting with TOPSECRET: only confinement can tell it apart."""
    path.write_bytes((SECRET_MARK * (size // len(SECRET_MARK) + 1))[:size])


def swap_for_link(target: Path, link_to: Path) -> None:
    tmp = target.with_name(".swap-" + target.name)
    tmp.unlink(missing_ok=True)
    os.symlink(link_to, tmp)
    os.replace(tmp, target)


# ---------------------------------------------------------------------------- files re-checked at every read


def test_original_has_its_content_type_right_after_start_up(server: Server) -> None:
    assert server.first_original == (200, "image/jpeg")


def test_swapped_files_are_never_served(server: Server) -> None:
    photo = CALTECH / "crab/image_0001.jpg"
    target = server.allowed / "swap" / "crab.jpg"
    shutil.copyfile(photo, target)
    status, _, body = post_json(server.url + "/api/v1/images/from-path", {"path": str(target)}, key=True)
    assert status in (200, 201), body
    image_id = json.loads(body)["id"]
    original = f"{server.url}/api/v1/images/{image_id}/original"
    thumbnail = f"{server.url}/api/v1/images/{image_id}/thumbnail?size=64"
    box_search = server.url + "/api/v1/search/id"
    box = {"image_id": image_id, "box": [10, 10, 120, 120], "k": 2}

    status, headers, body = request(original)
    assert status == 200 and body == photo.read_bytes() and headers["content-type"] == "image/jpeg"
    assert "immutable" in headers["cache-control"] and headers["etag"].strip('"') == json.loads(
        request(f"{server.url}/api/v1/images/{image_id}")[2]
    )["sha256"]
    size = len(body)

    seen: list[bytes] = []

    def refused(expected: int, kind: str) -> None:
        for url in (original, thumbnail):
            status, headers, body = request(url)
            seen.append(body)
            assert_problem(status, headers, body, expected, kind)
        status, headers, body = post_json(box_search, box)
        seen.append(body)
        assert_problem(status, headers, body, expected, kind)

    # 1. a symbolic link to a file outside the roots, of the very same size
    secret = server.outside / "secret.jpg"
    secret_like(secret, size)
    swap_for_link(target, secret)
    refused(404, "file-unavailable")
    # 2. a link to other content inside the roots: there, but not what was indexed
    inside = server.allowed / "swap" / "other.jpg"
    secret_like(inside, size)
    swap_for_link(target, inside)
    refused(409, "file-changed")
    # 3. the file rewritten in place with other content (same size, new mtime)
    target.unlink()
    secret_like(target, size)
    refused(409, "file-changed")
    # 4. a FIFO: refused at once, never opened for reading
    target.unlink()
    os.mkfifo(target)
    refused(404, "file-unavailable")
    # 5. a link out of the roots by a folder on the way
    target.unlink()
    (server.allowed / "swap" / "linkdir").symlink_to(server.outside)
    shutil.copyfile(photo, server.outside / "crab.jpg")  # the very content, but outside
    target.symlink_to(server.allowed / "swap" / "linkdir" / "crab.jpg")
    refused(404, "file-unavailable")
    # the same content back (a new mtime): the hash says it is the indexed file again
    target.unlink()
    shutil.copyfile(photo, target)
    assert request(original)[0] == 200 and request(thumbnail)[0] == 200
    assert post_json(box_search, box)[0] == 200
    assert not [b for b in seen if LEAK.encode() in b]


def test_stored_uploads_stay_in_the_uploads_folder(server: Server) -> None:
    photo = CALTECH / "lotus/image_0001.jpg"
    status, _, body = post_form(server.url + "/api/v1/images", {}, ("lotus.jpg", photo.read_bytes()), key=True)
    assert status in (200, 201), body
    image_id = json.loads(body)["id"]
    stored = next((server.data_dir / "uploads").rglob("*.jpg"))
    assert stored.read_bytes() == photo.read_bytes()
    secret = server.outside / "upload-secret.jpg"
    secret_like(secret, stored.stat().st_size)
    keep = stored.with_name("keep")
    os.replace(stored, keep)
    stored.symlink_to(secret)
    try:
        status, headers, body = request(f"{server.url}/api/v1/images/{image_id}/original")
        assert_problem(status, headers, body, 404, "file-unavailable")
        assert LEAK.encode() not in body
    finally:
        stored.unlink()
        os.replace(keep, stored)
    assert request(f"{server.url}/api/v1/images/{image_id}/original")[2] == photo.read_bytes()


# ---------------------------------------------------------------------------- bodies counted as they stream


def raw_exchange(
    port: int, head: str, chunks: Iterator[bytes] | None, *, pid: int | None = None
) -> tuple[int, bytes, int, int]:
    """Send ``head`` then ``chunks`` (chunked framing) while reading the answer.

    Returns (status, body, bytes of body sent before the server answered or closed,
    peak RSS growth of process ``pid`` during the exchange).
    """
    proc = psutil.Process(pid) if pid else None
    baseline = proc.memory_info().rss if proc else 0
    peak = baseline
    samples = [0]
    done = threading.Event()
    sent = [0]

    def sample() -> None:
        nonlocal peak
        while not done.is_set() and proc is not None:
            peak = max(peak, proc.memory_info().rss)
            samples[0] += 1
            time.sleep(0.002)

    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def send_body() -> None:
        try:
            for chunk in chunks or ():
                if done.is_set():
                    break
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent[0] += len(chunk)
            if not done.is_set() and chunks is not None:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: what the test wants
            pass

    try:
        sock.sendall(head.encode())
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        done.set()
        sender.join(60)
    finally:
        done.set()
        sock.close()
    sampler.join(5)
    assert proc is None or samples[0] >= 1, "the server's memory was not sampled during the exchange"
    return response.status, body, sent[0], peak - baseline


def big_multipart(total: int, boundary: str = "bigboundary") -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff\xd8\xff\xe0"
    block = b"\x5a" * MIB
    for _ in range(total // MIB):
        yield block


def head_of(path: str, content_type: str, *, key: bool, chunked: bool = True, length: int | None = None) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if key:
        lines.append(f"X-API-Key: {API_KEY}")
    return "\r\n".join(lines) + "\r\n\r\n"


def server_temp_files(server: Server) -> list[str]:
    """Files in the server's TMPDIR, and files it holds open there (deleted ones included)."""
    found = [str(p) for p in server.tmpdir.rglob("*")]
    for fd in Path(f"/proc/{server.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(server.tmpdir)):
            found.append(f"open: {target}")
    return found


def test_chunked_600_mib_upload_is_refused_at_the_limit(server: Server) -> None:
    before = server_temp_files(server)
    multipart_type = "multipart/form-data; boundary=bigboundary"
    status, body, sent, growth = raw_exchange(
        server.port, head_of("/api/v1/images", multipart_type, key=True), big_multipart(600 * MIB), pid=server.pid
    )
    doc = json.loads(body)
    assert status == 413 and doc["type"] == "tag:imsearch,2025:upload-too-large", body
    print(f"600 MiB chunked upload: 413 after {sent / MIB:.1f} MiB sent, server RSS growth {growth / MIB:.1f} MiB")
    assert sent < 100 * MIB  # refused at the 20 MiB limit, not after reading it all
    assert growth < 50 * MIB
    time.sleep(0.5)
    assert server_temp_files(server) == before  # (the runtime leaves a session file there at start-up)
    assert not [f for f in before if "open:" in f or Path(f).name.startswith("tmp")], before
    # the same by search (a read: no key needed) and with a Content-Length over the limit: 413 before any byte
    status, body, sent, _ = raw_exchange(
        server.port, head_of("/api/v1/search/image", multipart_type, key=False), big_multipart(600 * MIB)
    )
    assert status == 413, body
    status, body, sent, _ = raw_exchange(
        server.port, head_of("/api/v1/images", multipart_type, key=True, chunked=False, length=600 * MIB), None
    )
    assert status == 413 and sent == 0, body
    assert server_temp_files(server) == before


def test_chunked_300_mib_json_is_refused_at_the_limit(server: Server) -> None:
    def json_chunks() -> Iterator[bytes]:
        yield b'{"path": "/' + b"a" * (MIB - 11)
        for _ in range(299):
            yield b"a" * MIB

    status, body, sent, growth = raw_exchange(
        server.port, head_of("/api/v1/images/from-path", "application/json", key=True), json_chunks(), pid=server.pid
    )
    print(f"300 MiB chunked JSON: 413 after {sent / MIB:.1f} MiB sent, server RSS growth {growth / MIB:.1f} MiB")
    assert status == 413 and json.loads(body)["type"] == "tag:imsearch,2025:upload-too-large", body
    assert sent < 50 * MIB and growth < 50 * MIB


def test_unauthenticated_writes_are_refused_before_the_body(server: Server) -> None:
    """401 from the headers alone: the client has not sent one byte of its body when the answer comes."""
    multipart_type = "multipart/form-data; boundary=bigboundary"
    for path, content_type in (("/api/v1/images", multipart_type), ("/api/v1/images/from-path", "application/json"),
                               ("/api/v1/jobs", "application/json")):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            sock.sendall(head_of(path, content_type, key=False).encode())  # and no body at all
            response = http.client.HTTPResponse(sock)
            response.begin()
            doc = json.loads(response.read())
        finally:
            sock.close()
        assert response.status == 401 and doc["type"] == "tag:imsearch,2025:missing-api-key", (path, doc)
        assert response.getheader("www-authenticate") == 'APIKey header="X-API-Key"'
    # a wrong key too, with a declared length and no body sent
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        head = head_of("/api/v1/images", multipart_type, key=False, chunked=False, length=10 * MIB)
        sock.sendall(head.replace("\r\n\r\n", "\r\nX-API-Key: wrong-key-123\r\n\r\n").encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 401 and b"invalid-api-key" in response.read()
    finally:
        sock.close()


# ---------------------------------------------------------------------------- non-finite numbers


NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")


def json_operations(server: Server) -> list[tuple[str, dict[str, Any]]]:
    """(path, request schema) of every operation with a JSON body, from the server's OpenAPI document."""
    doc = json.loads(request(server.url + "/openapi.json")[2])
    components = doc["components"]["schemas"]
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                assert method == "post", (method, path)
                schema = content["application/json"]["schema"]
                out.append((path, components[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema))
    return out


def test_non_finite_numbers_on_every_json_route_are_422(server: Server) -> None:
    operations = json_operations(server)
    assert {"/api/v1/search/id", "/api/v1/images/from-path", "/api/v1/jobs"} <= {p for p, _ in operations}
    sent = 0
    for path, schema in operations:
        for prop in schema.get("properties", {}):
            for literal in NON_FINITE:
                status, headers, body = post_json(server.url + path, f'{{"{prop}": {literal}}}', key=True)
                assert_problem(status, headers, body, 422, "validation")
                sent += 1
    issue_cases = [
        ("/api/v1/search/id", '{"image_id": 1, "k": 1e400}'),
        ("/api/v1/search/id", '{"image_id": 1, "threshold": NaN}'),
        ("/api/v1/search/id", '{"image_id": Infinity}'),
        ("/api/v1/search/id", '{"image_id": 1, "filters": {"min_score": NaN}, "rerank": {"alpha": -Infinity}}'),
        ("/api/v1/search/id", '{"image_id": 1, "box": [0, 0, NaN, 1e400]}'),
        ("/api/v1/jobs", '{"path": "/x", "detect": NaN}'),
    ]
    for path, text in issue_cases:
        for key in (False, True):
            status, headers, body = post_json(server.url + path, text, key=key)
            expected = 401 if path == "/api/v1/jobs" and not key else 422
            doc = assert_problem(status, headers, body, expected)
            sent += 1
            if expected == 422:
                assert doc["type"] == "tag:imsearch,2025:validation" and doc["errors"], doc
    assert sent >= 40


def test_non_finite_numbers_in_forms_are_422(server: Server) -> None:
    photo = (CALTECH / "Faces/image_0001.jpg").read_bytes()
    for field, value in (("k", "1e400"), ("threshold", "NaN"), ("alpha", "Infinity"), ("min_score", "-inf"),
                         ("box", "0,0,nan,10"), ("min_area", "1e400")):
        status, headers, body = post_form(server.url + "/api/v1/search/image", {field: value}, ("q.jpg", photo))
        assert_problem(status, headers, body, 422, "validation")


# ---------------------------------------------------------------------------- read-only jobs, trusted proxies


def test_read_only_lists_jobs_and_forwarded_for_needs_a_trusted_proxy(server: Server) -> None:
    env = {"IMSEARCH_API_KEYS": API_KEY, "IMSEARCH_RATE_LIMIT_PER_MINUTE": "60", "IMSEARCH_RATE_LIMIT_BURST": "3",
           "IMSEARCH_WARMUP": "false", "TMPDIR": str(server.tmpdir)}
    for trusted in (False, True):
        flags = ["--read-only", *(["--trusted-proxy", "127.0.0.1"] if trusted else [])]
        log = server.log.with_name(f"serve-readonly-{trusted}.log")
        url, _, proc = start_server(server.data_dir, log, *flags, env=env)
        try:
            status, _, body = request(url + "/api/v1/jobs", headers=KEY)
            assert status == 200 and "jobs" in json.loads(body), body
            # each request claims another client address: believed only from a trusted proxy
            statuses = [request(url + "/api/v1/labels", headers={"X-Forwarded-For": f"203.0.113.{i}"})[0]
                        for i in range(6)]
            assert statuses == ([200] * 6 if trusted else [200, 200, 200, 429, 429, 429]), statuses
            if trusted:  # one claimed client is still limited
                same = [request(url + "/api/v1/labels", headers={"X-Forwarded-For": "198.51.100.7"})[0]
                        for _ in range(4)]
                assert same == [200, 200, 200, 429], same
        finally:
            stop(proc)


# ---------------------------------------------------------------------------- pages without the network


def test_docs_and_page_load_with_only_loopback(server: Server) -> None:
    from playwright.sync_api import Route, sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make setup does it)", pytrace=False)
    aborted: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            aborted.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.route("**/*", only_loopback)
            page.goto(server.url + "/docs")
            page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=60_000)
            assert "imsearch" in page.inner_text(".swagger-ui .info .title")
            assert page.locator(".swagger-ui .opblock").count() >= 14
            page.goto(server.url + "/")
            page.wait_for_load_state("networkidle")
            assert page.title()
        finally:
            browser.close()
    assert not aborted, aborted
    assert not errors, errors


def test_an_index_job_never_reads_through_a_link_out_of_the_roots(server: Server) -> None:
    """A job over a folder with a link to a file outside the roots, and a link to an outside
    folder: only the real photo is indexed, and nothing of the outside files shows anywhere."""
    folder = server.allowed / "jobswap"
    folder.mkdir()
    shutil.copyfile(CALTECH / "crab/image_0002.jpg", folder / "real.jpg")
    secret = server.outside / "job-secret.jpg"
    secret_like(secret, 6000)
    (folder / "link.jpg").symlink_to(secret)
    (folder / "linkdir").symlink_to(server.outside)
    status, _, body = post_json(server.url + "/api/v1/jobs", {"path": str(folder)}, key=True)
    assert status in (200, 201, 202), body
    job_id = json.loads(body)["id"]
    deadline = time.monotonic() + 240
    while True:
        status, _, body = request(f"{server.url}/api/v1/jobs/{job_id}", headers=KEY)
        job = json.loads(body)
        if job["finished"]:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "succeeded" and job["done"] == 1 and job["failed"] == 0, job
    status, _, body = request(server.url + "/api/v1/images?limit=200")
    paths = [item.get("path") for item in json.loads(body)["items"]]
    assert str(folder / "real.jpg") in paths and not [p for p in paths if p and "secret" in p]
    assert LEAK not in json.dumps(job) and LEAK not in server.log_text()
