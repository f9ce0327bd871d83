"""What one story moves through Cloud Storage when it runs on GKE, per output format.

Runs the real `snakemake --profile profiles/gke` with the storyreel executor on the demo story
(examples/stories/demo.json) against the Kubernetes API test server (pods are local processes)
and the GCS emulator, exactly as tests/test_gke_end_to_end.py sets them up, and measures:

- uploaded: the objects the run left in GCS (the work objects between jobs, and the published
  video, captions and preview), and the bytes the requests carried;
- downloaded by jobs: the object bytes the pods read. Pods reach the emulator through a
  counting proxy of their own, the Snakemake main process through another, so the two are
  told apart;
- the PNG frames that stayed in the video pod (render + compose + preview): the frame files
  under the pod's working directory, watched while it runs (they only grow until Snakemake
  deletes them once compose and preview are done).

    .venv/bin/python bench/gcs.py                       # 1280x720@30 (demo) and 2048x1024@60
    .venv/bin/python bench/gcs.py --formats landscape-720p --objects   # every object
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import conftest  # noqa: E402  (the GCS emulator)
import test_gke_end_to_end as e2e  # noqa: E402  (the cluster: workflow copy, server, buckets)

from storyreel.storage import storage_client  # noqa: E402

STORY = "demo"
DEFAULT_FORMATS = ("landscape-720p", "landscape-2048")
# Headers that belong to one connection, not to the request or response passed on.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


# --- a counting proxy in front of the emulator -----------------------------------------------


@dataclass
class Exchange:
    """One request through the proxy: what it asked and how many body bytes went each way."""

    method: str
    target: str
    status: int
    sent: int  # request body bytes
    received: int  # response body bytes
    response_json: dict | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def is_upload(self) -> bool:
        return self.path.startswith("/upload/") and self.method in {"POST", "PUT"}

    def is_download(self) -> bool:
        media = self.query.get("alt") == ["media"] or self.path.startswith("/download/")
        return self.method == "GET" and media and self.status in {200, 206}

    def object_name(self) -> str | None:
        """bucket/object of a download (from the path) or a finished upload (from the reply)."""
        match = re.search(r"/b/([^/]+)/o/(.+)$", self.path)
        if match:
            return f"{match.group(1)}/{unquote(match.group(2))}"
        if self.response_json and "bucket" in self.response_json:
            return f"{self.response_json['bucket']}/{self.response_json['name']}"
        return None


class CountingProxy:
    """An HTTP reverse proxy to the emulator that records every exchange.

    Object metadata names the emulator's own address (mediaLink, selfLink, a resumable upload's
    Location), and the client follows those links; the proxy rewrites them to itself, so every
    byte of an object goes through it.
    """

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def forward(self):
                proxy._forward(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.exchanges = []

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        body = _read_body(handler)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = self.upstream.netloc
        if body or handler.command in {"POST", "PUT", "PATCH"}:
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port)
        try:
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            reply_headers = response.getheaders()
            status, reason = response.status, response.reason
        finally:
            connection.close()

        upstream_url = f"{self.upstream.scheme}://{self.upstream.netloc}"
        content_type = dict((k.lower(), v) for k, v in reply_headers).get("content-type", "")
        reply_json = None
        if "json" in content_type:
            payload = payload.replace(upstream_url.encode(), self.url.encode())
            with contextlib.suppress(ValueError):
                reply_json = json.loads(payload)
        handler.send_response(status, reason)
        for key, value in reply_headers:
            if key.lower() in HOP_BY_HOP:
                continue
            handler.send_header(key, value.replace(upstream_url, self.url))
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)
        received = 0 if handler.command == "HEAD" else len(payload)
        exchange = Exchange(
            handler.command,
            handler.path,
            status,
            len(body),
            received,
            reply_json if isinstance(reply_json, dict) else None,
        )
        with self._lock:
            self.exchanges.append(exchange)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


@dataclass
class Traffic:
    """The object bytes of a list of exchanges."""

    uploads: int = 0  # request body bytes of uploads (object data plus multipart framing)
    upload_requests: int = 0
    downloads: int = 0  # response body bytes of media downloads
    download_requests: int = 0
    other_requests: int = 0  # metadata, listings, bucket lookups
    other_bytes: int = 0
    downloaded: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, exchanges: list[Exchange]) -> Traffic:
        traffic = cls()
        for exchange in exchanges:
            if exchange.is_upload():
                traffic.uploads += exchange.sent
                traffic.upload_requests += 1
            elif exchange.is_download():
                traffic.downloads += exchange.received
                traffic.download_requests += 1
                traffic.downloaded[exchange.object_name() or exchange.path].append(
                    exchange.received
                )
            else:
                traffic.other_requests += 1
                traffic.other_bytes += exchange.sent + exchange.received
        return traffic


# --- the frames in the video pod --------------------------------------------------------------


class FrameWatch:
    """Watches the video pod's frame folders and keeps the largest total seen."""

    def __init__(self, server, interval: float = 0.5):
        self.server = server
        self.interval = interval
        self.peak_bytes = 0
        self.peak_files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FrameWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        frame_roots: dict[str, list[Path]] = {}  # pod uid -> its stories/<story>/frames
        while not self._stop.wait(self.interval):
            for record in self.server.pod_records:
                if record.labels.get("storyreel/rule") != "video" or record.phase != "Running":
                    continue
                if not frame_roots.get(record.uid):
                    frame_roots[record.uid] = [
                        path
                        for volume in list(record.volume_dirs.values())
                        for path in volume.glob(f"**/stories/{STORY}/frames")
                    ]
                total = files = 0
                for root in frame_roots[record.uid]:
                    for shard in _entries(root):
                        for entry in _entries(shard.path):
                            if entry.name.endswith(".png"):
                                with contextlib.suppress(FileNotFoundError):
                                    total += entry.stat().st_size
                                    files += 1
                if total > self.peak_bytes:
                    self.peak_bytes, self.peak_files = total, files


def _entries(folder: str | Path) -> list[os.DirEntry]:
    """The entries of a folder, or none once it is gone (the frames are temporary)."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Result:
    format: str
    size: str
    seconds: float
    work_objects: dict[str, int]  # name -> size
    published: dict[str, int]
    pods: Traffic
    main: Traffic
    frames: int  # presenter frames, from the render logs
    frame_bytes: int
    frame_files: int


class TempDirs:
    """What the fixtures reused here ask of pytest's tmp_path_factory."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        return path


def run_format(cluster, pods_proxy, main_proxy, direct_url: str, name: str, fmt: dict) -> Result:
    prefix = f"runs-{name}"
    publish = f"videos/{name}/{{story}}/"
    overlay = {
        "story_source": f"gs://{cluster.buckets['inbox']}/stories/{{story}}.json",
        "storage": {
            "allowed_image_prefixes": [],
            "publish_prefix": f"gs://{cluster.buckets['videos']}/{publish}",
        },
        "containers": {"registry": e2e.REGISTRY, "tag": e2e.TAG},
        "video": {"format": name},
    }
    config = cluster.work / f"bench-{name}.yaml"
    config.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    cluster.env["STORYREEL_GCS_PREFIX"] = f"gs://{cluster.buckets['work']}/{prefix}"
    cluster.server.pod_env["STORAGE_EMULATOR_HOST"] = pods_proxy.url

    pods_proxy.reset()
    main_proxy.reset()
    started = time.perf_counter()
    with FrameWatch(cluster.server) as frames:
        result = cluster.snakemake(
            f"stories/{STORY}/published.json", "--configfile", config.name, timeout=3600
        )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        failed = [
            f"--- {record.name} ({record.labels.get('storyreel/rule')}):\n{record.log()[-3000:]}"
            for record in cluster.server.pod_records
            if record.exit_codes and any(record.exit_codes.values())
        ]
        sys.exit(f"snakemake failed:\n{result.stderr[-6000:]}\n" + "\n".join(failed))
    pods, main = Traffic.of(pods_proxy.snapshot()), Traffic.of(main_proxy.snapshot())

    os.environ["STORAGE_EMULATOR_HOST"] = direct_url  # the bench's own reads are not counted
    work_objects = {
        object_name: size
        for object_name, size in cluster.objects("work").items()
        if object_name.startswith(f"{prefix}/")
    }
    published = {
        object_name: size
        for object_name, size in cluster.objects("videos").items()
        if object_name.startswith(f"videos/{name}/")
    }
    frame_count = 0
    bucket = storage_client().bucket(cluster.buckets["work"])
    for object_name in work_objects:
        if re.search(rf"stories/{STORY}/logs/render-\d+\.log$", object_name):
            log = bucket.blob(object_name).download_as_text()
            frame_count += sum(int(n) for n in re.findall(r"(\d+) frames in", log))
    return Result(
        name,
        f"{fmt['width']}x{fmt['height']}@{fmt['fps']}",
        seconds,
        work_objects,
        published,
        pods,
        main,
        frame_count,
        frames.peak_bytes,
        frames.peak_files,
    )


# --- report -----------------------------------------------------------------------------------


def mb(size: int) -> str:
    return f"{size / 1e6:,.2f} MB"


def uploaded(result: Result) -> int:
    return sum(result.work_objects.values()) + sum(result.published.values())


def short(name: str) -> str:
    """An object name without the run prefix and the storage plugin's local-path nesting."""
    return re.sub(r"^runs-[^/]+/(?:[^/]+/)*?(stories/)", r"\1", name)


def report(results: list[Result], every_object: bool = False) -> None:
    rows = [
        ("story", lambda r: f"{STORY} ({r.frames:,} presenter frames)"),
        ("wall time of the run", lambda r: f"{r.seconds:.0f} s"),
        (
            "uploaded: work objects",
            lambda r: f"{mb(sum(r.work_objects.values()))} in {len(r.work_objects)} objects",
        ),
        (
            "uploaded: published",
            lambda r: f"{mb(sum(r.published.values()))} in {len(r.published)} objects",
        ),
        ("uploaded: total objects", lambda r: mb(uploaded(r))),
        (
            "  upload requests, pods",
            lambda r: f"{mb(r.pods.uploads)} in {r.pods.upload_requests} requests",
        ),
        (
            "  upload requests, main",
            lambda r: f"{mb(r.main.uploads)} in {r.main.upload_requests} requests",
        ),
        (
            "downloaded by jobs",
            lambda r: f"{mb(r.pods.downloads)} in {r.pods.download_requests} requests",
        ),
        (
            "downloaded by main",
            lambda r: f"{mb(r.main.downloads)} in {r.main.download_requests} requests",
        ),
        (
            "other requests (pods + main)",
            lambda r: (
                f"{r.pods.other_requests + r.main.other_requests:,}, "
                f"{mb(r.pods.other_bytes + r.main.other_bytes)}"
            ),
        ),
        (
            "PNG frames kept in the video pod",
            lambda r: f"{mb(r.frame_bytes)} in {r.frame_files:,} files",
        ),
        ("frames / uploaded objects", lambda r: f"{r.frame_bytes / max(1, uploaded(r)):.1f} x"),
    ]
    header = [""] + [f"{r.format} ({r.size})" for r in results]
    table = [header] + [[label] + [cell(r) for r in results] for label, cell in rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    for index, row in enumerate(table):
        print("| " + " | ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")

    for r in results:
        shown = None if every_object else 6
        print(f"\n{r.format} ({r.size}): {'objects' if every_object else 'largest objects'}")
        objects = {**r.work_objects, **{f"published {k}": v for k, v in r.published.items()}}
        for object_name, size in sorted(objects.items(), key=lambda item: -item[1])[:shown]:
            print(f"  {size:>12,} B  {short(object_name)}")
        print(f"{r.format}: bytes downloaded by jobs (per object: bytes, times)")
        downloads = sorted(r.pods.downloaded.items(), key=lambda item: -sum(item[1]))[:shown]
        for object_name, sizes in downloads:
            print(f"  {sum(sizes):>12,} B  {len(sizes)} x  {short(object_name.split('/', 1)[1])}")


def machine() -> str:
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024**2:.0f} GB memory"
    gpu = "a GPU" if shutil.which("nvidia-smi") else "no GPU"
    return (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores{memory}, {gpu}, "
        f"Python {platform.python_version()}"
    )


@contextlib.contextmanager
def emulator(temp: TempDirs) -> Iterator[str]:
    yield from conftest.gcs_emulator.__wrapped__(temp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS))
    parser.add_argument(
        "--objects", action="store_true", help="list every object, not the 6 largest"
    )
    args = parser.parse_args()
    formats = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))["formats"]
    unknown = set(args.formats) - set(formats)
    if unknown:
        sys.exit(f"unknown formats {sorted(unknown)}; config.yaml has {sorted(formats)}")

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as scratch:
        temp = TempDirs(Path(scratch))
        with emulator(temp) as direct_url:
            main_proxy, pods_proxy = CountingProxy(direct_url), CountingProxy(direct_url)
            try:
                # The end-to-end test's cluster, with the main process behind its own proxy.
                with contextlib.contextmanager(e2e.cluster.__wrapped__)(
                    main_proxy.url, temp
                ) as cluster:
                    os.environ["STORAGE_EMULATOR_HOST"] = direct_url
                    inbox = storage_client().bucket(cluster.buckets["inbox"])
                    inbox.blob(f"stories/{STORY}.json").upload_from_filename(
                        str(REPO / "examples" / "stories" / f"{STORY}.json"),
                        content_type="application/json",
                    )
                    results = []
                    for name in args.formats:
                        print(f"running {name} ...", flush=True)
                        results.append(
                            run_format(
                                cluster, pods_proxy, main_proxy, direct_url, name, formats[name]
                            )
                        )
            finally:
                main_proxy.close()
                pods_proxy.close()
    print()
    report(results, every_object=args.objects)


if __name__ == "__main__":
    main()
