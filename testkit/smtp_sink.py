"""A real SMTP server on loopback for the end-to-end tests (aiosmtpd).

Usage: python smtp_sink.py OUT_DIR
Writes every message it accepts to OUT_DIR as <n>.eml (the envelope recipients in an
X-Envelope-To header first), prints "listening on PORT" once ready, and exits when its standard
input closes (so it ends with the test that started it).
"""

import os
import socket
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out):
        self.out = out
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        path = os.path.join(self.out, f"{self.n}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(b"X-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    # A free port can be taken between choosing and binding it: try a few.
    for attempt in range(5):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        controller = Controller(Sink(out), hostname="127.0.0.1", port=port)
        try:
            controller.start()
            break
        except Exception:
            if attempt == 4:
                raise
    print(f"listening on {port}", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
