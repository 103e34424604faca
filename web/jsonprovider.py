"""JSON responses through orjson: a process's cumulative output can be hundreds of MB of
per-line objects, and the standard library's encoder was most of the time spent answering."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider


class OrjsonProvider(DefaultJSONProvider):
    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        # Bytes straight from orjson: no str round trip for a large body.
        return Response(
            orjson.dumps(obj, default=self.default, option=orjson.OPT_APPEND_NEWLINE),
            mimetype=self.mimetype,
        )
