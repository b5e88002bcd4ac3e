"""Errors become clear JSON answers: 4xx for bad input, 503 when the database is away, never a traceback."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from bot.web.jsonbody import BadJson
from storage.db import UNAVAILABLE
from storage.leads import LeadNotFound
from storage.privacy import LeadErased

log = logging.getLogger(__name__)


def json_error(status: int, message: str) -> web.Response:
    """An error answer every client can read."""
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Map domain exceptions to HTTP once, here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json" or request.path.startswith("/console"):
            raise
        return json_error(exc.status, exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason)
    except LeadErased as exc:
        return json_error(410, str(exc))
    except LeadNotFound as exc:
        return json_error(404, f"no lead {exc.args[0]}")
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip on a body that is not gzip
        answer = json_error(400, "the body could not be read (broken transfer or content encoding)")
        answer.force_close()  # the rest of the body is unreadable: this connection cannot carry another request
        return answer
    except BadJson as exc:  # malformed (400), or holding what no database stores (422)
        return json_error(exc.status, str(exc))
    except json.JSONDecodeError:
        return json_error(400, "the body is not valid JSON")
    except UnicodeDecodeError:
        return json_error(400, "the body is not valid UTF-8")
    except UNAVAILABLE as exc:  # unreachable, or every pooled connection busy for longer than the pool timeout
        log.error("database unavailable on %s %s: %s", request.method, request.path, exc)
        return json_error(503, "the database is unavailable; retry later")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error")
