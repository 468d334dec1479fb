"""Keeps API keys out of the logs: browsers pass them in the query (``?api_key=``, and clients
spell it ``API_KEY=``, ``apikey=``, ``key=``, ``token=``, ``access_token=``...), which uvicorn
would print."""

from __future__ import annotations

import logging
import re

# Any query parameter whose name ends in "key" or "token", in any case.
_KEY = re.compile(r"(?i)([\w.%-]*(?:key|token)=)[^&\s\"']+")


class RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_KEY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        record.msg = _KEY.sub(r"\1***", str(record.msg))
        return True


def redact_uvicorn_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactKeys())
