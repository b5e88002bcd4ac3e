"""A fake Telegram Bot API for the benchmarks, as its own process; optionally enforcing Telegram's send limits.

    .venv/bin/python bench/fake_bot_api.py --port 8081 [--limits] [--overall 30] [--per-chat 1] [--group 20]

It is the tests' fake (tests/fake_telegram.py: getMe, sendMessage, editMessageText, answerCallbackQuery, ...)
plus two things:

* With `--limits`, every sendMessage and editMessageText is counted against Telegram's published limits, and
  one over them is answered `429 Too Many Requests` with `parameters.retry_after` (whole seconds, as
  Telegram does) and not delivered:
    - overall: at most `--overall` (30) messages in any 1-second sliding window;
    - a private chat (positive id): at most `--per-chat` (1) message in any 1-second sliding window;
    - a group (negative id): at most `--group` (20) messages in any 60-second sliding window.
  Only accepted messages count. `--slack` (default 0.02 s) shortens each window by that much, so timing
  jitter between the sender's clock and this process's reception does not turn an on-time send into a 429.
* `GET /_bench/calls` answers every call so far as JSON: t (Unix time on reception), method, chat_id,
  status, and the first line of the text.

It prints "listening" on stderr once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_telegram import FakeTelegram  # noqa: E402  (the tests' fake, reused as is)

LIMITED = ("sendMessage", "editMessageText")


class SlidingWindow:
    """At most `limit` events in any `seconds`-long window."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.times: deque[float] = deque()

    def wait(self, now: float) -> float:
        """0 if one more event fits now, else how long until it would."""
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        if len(self.times) < self.limit:
            return 0.0
        return self.times[0] + self.seconds - now

    def add(self, now: float) -> None:
        self.times.append(now)


class BenchTelegram(FakeTelegram):
    """The tests' fake with Telegram's send limits (when `limits`) and a log the benchmark can fetch."""

    def __init__(self, token: str, limits: argparse.Namespace | None) -> None:
        super().__init__(token)
        self.limits = limits
        self.log: list[dict[str, Any]] = []
        if limits is not None:
            slack = limits.slack
            self.overall = SlidingWindow(limits.overall, 1.0 - slack)
            self.chats: dict[str, SlidingWindow] = defaultdict(lambda: SlidingWindow(limits.per_chat, 1.0 - slack))
            self.groups: dict[str, SlidingWindow] = defaultdict(lambda: SlidingWindow(limits.group, 60.0 - slack))

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/_bench/calls", self.calls_json)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        now, wall = time.monotonic(), time.time()
        method = request.match_info["method"]
        if self.limits is not None and method in LIMITED:
            params = dict(await request.post()) if request.content_type != "application/json" else await request.json()
            chat = str(params.get("chat_id"))
            windows = [self.overall, self.groups[chat] if chat.startswith("-") else self.chats[chat]]
            wait = max(window.wait(now) for window in windows)
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                body = {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {retry_after}",
                    "parameters": {"retry_after": retry_after},
                }
                self._note(wall, method, params, 429)
                return web.json_response(body, status=429)
            for window in windows:
                window.add(now)
        response = await super().handle(request)
        call = self.calls[-1]
        self._note(wall, call.method, call.params, call.status)
        self.calls.clear()  # the log above is what the benchmark reads; keep memory flat
        return response

    def _note(self, wall: float, method: str, params: dict, status: int) -> None:
        text = str(params.get("text") or "")
        self.log.append(
            {
                "t": wall,
                "method": method,
                "chat_id": str(params.get("chat_id")),
                "status": status,
                "text": text.split("\n", 1)[0][:200],
            }
        )

    async def calls_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--limits", action="store_true", help="enforce Telegram's send limits (429 beyond them)")
    parser.add_argument("--overall", type=int, default=30, help="messages per 1 s sliding window, all chats")
    parser.add_argument("--per-chat", type=int, default=1, help="messages per 1 s sliding window, one private chat")
    parser.add_argument("--group", type=int, default=20, help="messages per 60 s sliding window, one group")
    parser.add_argument("--slack", type=float, default=0.02, help="seconds each window is shortened by (jitter)")
    args = parser.parse_args()
    asyncio.run(serve(BenchTelegram(args.token, args if args.limits else None), args.port))


async def serve(fake: BenchTelegram, port: int) -> None:
    """Serve until killed; say "listening" once connections are accepted."""
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("listening", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
