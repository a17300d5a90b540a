"""``bench data omniglot --download DIR`` against a local HTTP server: staging, checksums, and one clear line on failure.

Only 127.0.0.1 is ever contacted. The success path calls the downloader (the test zips' MD5s differ from
the official ones, so ``ZIP_MD5`` is monkeypatched); the error paths run the ``bench data`` command in-process.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_plugins.suites import omniglot
from bench_plugins.suites.omniglot import Omniglot
from PIL import Image

from bench.cli import main
from bench.errors import DataError

ALPHABETS = {"images_background": ("Latin", "Greek"), "images_evaluation": ("Futurama",)}
CHARACTERS = ("character01", "character02")
DRAWINGS = 3
NO_PROXY = {"http_proxy": "", "HTTP_PROXY": "", "https_proxy": "", "HTTPS_PROXY": "", "all_proxy": "", "ALL_PROXY": "",
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def make_zip(path: Path, part: str) -> None:
    """A small zip laid out like the official one: ``<part>/<Alphabet>/characterNN/*.png``, 105x105 mode "1"."""
    with zipfile.ZipFile(path, "w") as archive:
        for alphabet in ALPHABETS[part]:
            for character in CHARACTERS:
                for drawing in range(DRAWINGS):
                    image = Image.new("1", (105, 105), 1)
                    image.paste(0, (10 + 7 * drawing, 20, 40 + 7 * drawing, 60))  # an ink stroke
                    png = io.BytesIO()
                    image.save(png, format="PNG")
                    archive.writestr(f"{part}/{alphabet}/{character}/{drawing:04d}_{drawing + 1:02d}.png", png.getvalue())


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the files, except under ``/truncated/`` (half the body, then the connection closes) and
    ``/chunked-cut/`` (one chunk of a chunked body, then the connection closes)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        for prefix in ("/truncated/", "/chunked-cut/"):
            if self.path.startswith(prefix):
                body = (Path(self.directory) / self.path[len(prefix):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                if prefix == "/truncated/":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = body[: len(body) // 2]
                    self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
                self.wfile.flush()
                self.close_connection = True
                return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def server(tmp_path: Path):
    """The two test zips served from 127.0.0.1 on an ephemeral port; yields (base URL, {part: md5})."""
    served = tmp_path / "served"
    served.mkdir()
    md5 = {}
    for part in omniglot.PARTS:
        make_zip(served / f"{part}.zip", part)
        md5[part] = hashlib.md5((served / f"{part}.zip").read_bytes()).hexdigest()
    assert md5 != omniglot.ZIP_MD5

    def handler(*args, **kwargs):
        return Handler(*args, directory=str(served), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", md5
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No proxies, a private cache and a private temporary folder (to see that downloads clean up)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**NO_PROXY, "METABENCH_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(scratch)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR in this process
    return env


@pytest.fixture
def error_line(isolated, monkeypatch, capsys) -> Callable[..., str]:
    """``error_line(suite, target, url)``: run ``bench data SUITE --download TARGET`` (from ``url`` when given),
    expect it to fail with a single line on stderr (an exception escaping ``main`` fails the test), return it."""

    def error_line(suite: str, target: Path, url: str | None = None) -> str:
        if url is not None:
            monkeypatch.setenv(omniglot.URL_ENV, url)
        status = main(["data", suite, "--download", str(target)])
        stdout, stderr = capsys.readouterr()
        assert status == 2, (status, stdout, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bench data: error: "), stderr
        assert "Traceback" not in stderr
        return lines[0]

    return error_line


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def test_download_stages_the_standard_tree(server, isolated, tmp_path, monkeypatch):
    url, md5 = server
    monkeypatch.setenv(omniglot.URL_ENV, url + "/")  # a trailing slash is tolerated
    monkeypatch.setattr(omniglot, "ZIP_MD5", md5)
    target = tmp_path / "data"

    Omniglot.download(target)

    root = target / "omniglot"
    for part, alphabets in ALPHABETS.items():
        for alphabet in alphabets:
            for character in CHARACTERS:
                pngs = sorted((root / part / alphabet / character).glob("*.png"))
                assert len(pngs) == DRAWINGS, (part, alphabet, character)
                with Image.open(pngs[0]) as image:
                    assert image.size == (105, 105)
    assert not list(target.rglob("*.zip")), "the zips belong in a temporary folder, not in the data folder"
    assert not list(Path(isolated["TMPDIR"]).iterdir()), "the temporary download folder was not removed"

    suite = Omniglot(data_dir=target)
    assert suite.data_root("omniglot") == root
    images = suite.all_images(root)  # decodes what was staged; the cache goes to the private folder
    assert images.shape == (3 * len(CHARACTERS), DRAWINGS, 28, 28)
    assert list((tmp_path / "cache").glob("omniglot-*.npz"))


def test_no_network_names_the_url_and_how_to_stage_by_hand(closed_port, error_line, tmp_path):
    url = f"http://127.0.0.1:{closed_port}/omniglot"
    target = tmp_path / "data"
    line = error_line("omniglot", target, url)
    assert f"{url}/images_background.zip" in line
    assert "Without internet, copy the standard tree into" in line and str(target / "omniglot") in line
    assert "images_background/<Alphabet>/characterNN/*.png" in line
    assert files_under(target) == []


def test_checksum_mismatch_is_not_unpacked(server, isolated, error_line, tmp_path):
    url, md5 = server
    target = tmp_path / "data"
    line = error_line("omniglot", target, url)
    expected = omniglot.ZIP_MD5["images_background"]
    assert f"{url}/images_background.zip has MD5 {md5['images_background']}, expected {expected}; not unpacked" in line
    assert files_under(target) == [], "a zip that fails its checksum must not be unpacked"
    assert not list(Path(isolated["TMPDIR"]).iterdir())


def test_missing_file_404(server, error_line, tmp_path):
    url, _ = server
    base = f"{url}/no/such/folder"
    line = error_line("omniglot", tmp_path / "data", base)
    assert f"cannot download {base}/images_background.zip" in line
    assert "not found" in line.lower()
    assert files_under(tmp_path / "data") == []


@pytest.mark.parametrize("prefix", ["truncated", "chunked-cut"])
def test_download_cut_part_way_leaves_no_zip(server, isolated, error_line, tmp_path, prefix):
    url, _ = server
    target = tmp_path / "data"
    line = error_line("omniglot", target, f"{url}/{prefix}")
    assert f"{url}/{prefix}/images_background.zip" in line
    assert files_under(target) == [], "a half-downloaded zip (or its contents) was left in the data folder"
    assert not list(Path(isolated["TMPDIR"]).iterdir()), "the temporary download folder was not removed"


def test_suite_without_downloader(error_line, tmp_path):
    line = error_line("sinusoid", tmp_path / "data")
    assert "suite 'sinusoid' has no downloader" in line
    assert files_under(tmp_path / "data") == []


def test_download_error_is_a_data_error(closed_port, isolated, tmp_path, monkeypatch):
    monkeypatch.setenv(omniglot.URL_ENV, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(DataError, match="cannot download"):
        Omniglot.download(tmp_path / "data")
