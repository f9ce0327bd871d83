"""An aiohttp application on 127.0.0.1, served from a thread of its own with its own event loop,
so that tests (and the real clients they drive) can call it synchronously. The test servers
that speak real HTTP APIs (Kubernetes, gentle) build on it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web


class ThreadedHttpServer:
    """Subclasses build the application in ``_make_app`` and may extend ``_after_start`` and
    ``_before_shutdown`` (both run on the server's loop)."""

    name = "test server"
    runner_options: dict[str, Any] = {}

    def __init__(self, *, port: int = 0):
        self._requested_port = port
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=self.name, daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=30) or self._startup_error is not None:
            raise RuntimeError(f"the {self.name} did not start") from self._startup_error
        return self

    def stop(self) -> None:
        """Run the subclass's shutdown, close the HTTP server and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _make_app(self) -> web.Application:
        raise NotImplementedError

    async def _after_start(self) -> None:
        """Runs on the loop once the server listens."""

    async def _before_shutdown(self) -> None:
        """Runs on the loop before the server closes."""

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._start_http())
        except BaseException as error:  # reported to start() in the calling thread
            self._startup_error = error
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start_http(self) -> None:
        app = await self._make_app()
        self._runner = web.AppRunner(app, access_log=None, **self.runner_options)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._requested_port).start()
        self.port = self._runner.addresses[0][1]
        await self._after_start()

    async def _shutdown(self) -> None:
        await self._before_shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
