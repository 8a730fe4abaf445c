"""A slowloris client, run as its own process by test_proxy_limits.py (stdlib only).

    python slowloris.py PORT CONNECTIONS TRICKLE_S DURATION_S

Keeps CONNECTIONS connections open to 127.0.0.1:PORT for DURATION_S seconds, each sending
a request head one header line every TRICKLE_S seconds and never ending it; a connection
the server ends is opened again. Prints "open" once the first CONNECTIONS are connected,
then at the end one JSON line: how long each ended connection lived, and how many of
them got a 408 first. Bounded: it exits after DURATION_S plus 10 s whatever happens.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def main() -> None:
    port, count, trickle, duration = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        float(sys.argv[3]),
        float(sys.argv[4]),
    )
    sel = selectors.DefaultSelector()
    born: dict[socket.socket, float] = {}
    answered: dict[socket.socket, bytes] = {}
    lifetimes: list[float] = []
    got_408 = 0
    next_send = time.monotonic()

    def open_one() -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        s.setblocking(False)
        born[s] = time.monotonic()
        answered[s] = b""
        sel.register(s, selectors.EVENT_READ)

    for _ in range(count):
        open_one()
    print("open", flush=True)
    start = time.monotonic()
    hard_stop = start + duration + 10
    while time.monotonic() < start + duration and time.monotonic() < hard_stop:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data:
                answered[s] += data
                continue
            sel.unregister(s)
            lifetimes.append(time.monotonic() - born.pop(s))
            got_408 += answered.pop(s).startswith(b"HTTP/1.1 408 ")
            s.close()
            open_one()
        now = time.monotonic()
        if now >= next_send:
            next_send = now + trickle
            for s in list(born):
                try:
                    s.send(b"X-Slow: a\r\n")
                except OSError:
                    pass
    for s in list(born):
        s.close()
    print(json.dumps({"lifetimes": lifetimes, "got_408": got_408}), flush=True)


if __name__ == "__main__":
    main()
