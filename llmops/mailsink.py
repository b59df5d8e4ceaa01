"""A local SMTP sink (aiosmtpd) that stores every message it receives as an ``.eml`` file."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

_counter = itertools.count(1)


class EmlWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        path = self.folder / f"{stamp}-{next(_counter):05d}.eml"
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(content)
        tmp.replace(path)
        return "250 Message accepted for delivery"


def start(folder: Path, host: str = "127.0.0.1", port: int = 2525) -> Any:
    """Start the sink on a background thread; returns the aiosmtpd Controller (call ``.stop()``)."""
    from aiosmtpd.controller import Controller

    controller = Controller(EmlWriter(folder), hostname=host, port=port)
    controller.start()
    return controller
