"""An SMTP sink in its own process that writes each accepted recipient to a file.

    python -m bench.smtp_recorder PORT FILE [DELAY_S]

One line per recipient per message, flushed before the 250, so a count of the file's lines
is what the server took: duplicates and losses are read there, not from the sender's
bookkeeping.  `DELAY_S` holds each message that long before answering (a slow server).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import uvloop
from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, out: TextIO, delay_s: float = 0.0) -> None:
        self.out = out
        self.delay_s = delay_s

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.out.write("".join(f"{rcpt}\n" for rcpt in envelope.rcpt_tos))
        self.out.flush()
        return "250 OK"


def main() -> None:
    port, path = int(sys.argv[1]), Path(sys.argv[2])
    delay_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    with path.open("a", encoding="utf-8") as out:
        # uvloop (installed with uvicorn[standard]): the sink spends less of the machine's
        # CPU per message, which the senders it measures need.
        controller = Controller(Recorder(out, delay_s), hostname="127.0.0.1", port=port,
                                loop=uvloop.new_event_loop())
        controller.start()
        try:
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
        finally:
            controller.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
