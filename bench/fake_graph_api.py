"""A fake Graph API (WhatsApp Cloud API) for the benchmarks, as its own process, enforcing WhatsApp's send limits.

    .venv/bin/python bench/fake_graph_api.py --port 8082 [--rate 80] [--slack 0.02] [--pair-interval 6 --pair-burst 45]

It is the tests' fake (tests/fake_graph.py: `POST /{version}/{phone_id}/messages` answered with a `wamid`,
Meta's error JSON, one access token) plus three things:

* Throughput, per phone number: at most `--rate` (80, Meta's default) messages in any 1-second sliding
  window. A send beyond it is answered HTTP 400 with Meta's error JSON, code 130429 "Rate limit hit", and
  not delivered. Only accepted messages count. `--slack` (default 0.02 s) shortens the window by that much,
  so timing jitter between the sender's clock and this process's reception does not turn an on-time send
  into a 130429 (as fake_bot_api.py does for Telegram).
* With `--pair-interval S` (off by default): the pair rate limit, per (phone number, recipient). Meta
  documents one message every 6 seconds to one WhatsApp user, with bursts of up to 45 that borrow from the
  future ("after a burst of 20, wait about 2 minutes"). That is a GCRA with emission interval S and burst
  `--pair-burst` (45): a send is accepted when the recipient's theoretical arrival time is at most
  (burst - 1) * S ahead of now, and moves it S on. Beyond: HTTP 400, code 131056 "(Business Account,
  Consumer Account) pair rate limit hit", not delivered.
* `GET /_bench/calls` answers every messages call so far as JSON: t (Unix time on reception), phone_id, to,
  status, code (Meta's error code, or null), and the first line of the text. `GET /_bench/accepted`
  answers only how many distinct texts starting with `?prefix=` were accepted (cheap enough to poll).

It prints "listening" on stderr once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fake_graph import ERRORS, FakeGraph, _error_body, _what  # noqa: E402  (the tests' fake, reused as is)


class SlidingWindow:
    """At most `limit` events in any `seconds`-long window."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.times: deque[float] = deque()

    def fits(self, now: float) -> bool:
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        return len(self.times) < self.limit

    def add(self, now: float) -> None:
        self.times.append(now)


class PairLimit:
    """A GCRA: one send per `interval` seconds to one recipient, with bursts of up to `burst`."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.tolerance = interval, (burst - 1) * interval
        self.tat: dict[str, float] = {}

    def fits(self, key: str, now: float) -> bool:
        return self.tat.get(key, now) - now <= self.tolerance

    def add(self, key: str, now: float) -> None:
        self.tat[key] = max(self.tat.get(key, now), now) + self.interval


class BenchGraph(FakeGraph):
    """The tests' fake with WhatsApp's throughput and pair limits, and a log the benchmark can fetch."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.windows: dict[str, SlidingWindow] = defaultdict(lambda: SlidingWindow(args.rate, 1.0 - args.slack))
        self.pair = PairLimit(args.pair_interval, args.pair_burst) if args.pair_interval > 0 else None
        self.log: list[dict[str, Any]] = []
        self.accepted: set[str] = set()

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/_bench/calls", self.calls_json)
        app.router.add_get("/_bench/accepted", self.accepted_json)
        return app

    async def whatsapp(self, request: web.Request) -> web.Response:
        now, wall = time.monotonic(), time.time()
        body = await request.json()
        phone_id, to = request.match_info["phone_id"], str(body.get("to", ""))
        window = self.windows[phone_id]
        refused = None
        if not window.fits(now):
            refused = "rate_limit"
        elif self.pair is not None and not self.pair.fits(f"{phone_id}:{to}", now):
            refused = "spam_rate_limit"
        if refused is not None:
            status, code, subcode, kind, message = ERRORS[refused]
            self._note(wall, phone_id, body, status, code)
            return web.json_response(_error_body(status, code, subcode, kind, message), status=status)
        response = await super().whatsapp(request)
        send = self.sends.pop()  # the log below is what the benchmark reads; keep memory flat
        if send.status == 200:
            window.add(now)
            if self.pair is not None:
                self.pair.add(f"{phone_id}:{to}", now)
        self._note(wall, phone_id, body, send.status, None)
        return response

    def _note(self, wall: float, phone_id: str, body: dict, status: int, code: int | None) -> None:
        text = _what(body) if isinstance(body, dict) and body.get("type") else ""
        first_line = text.split("\n", 1)[0][:200]
        self.log.append(
            {
                "t": wall,
                "phone_id": phone_id,
                "to": str(body.get("to")),
                "status": status,
                "code": code,
                "text": first_line,
            }
        )
        if status == 200:
            self.accepted.add(first_line)

    async def calls_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    async def accepted_json(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        return web.json_response({"accepted": sum(1 for text in self.accepted if text.startswith(prefix))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=int, default=80, help="messages per 1 s sliding window, per phone number")
    parser.add_argument("--slack", type=float, default=0.02, help="seconds the window is shortened by (jitter)")
    parser.add_argument(
        "--pair-interval", type=float, default=0.0, help="seconds per message to one recipient (0: off)"
    )
    parser.add_argument("--pair-burst", type=int, default=45, help="burst allowed to one recipient")
    args = parser.parse_args()
    asyncio.run(serve(BenchGraph(args), args.port))


async def serve(fake: BenchGraph, port: int) -> None:
    """Serve until killed; say "listening" once connections are accepted."""
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("listening", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
