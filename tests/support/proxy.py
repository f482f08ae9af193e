"""A loopback TCP proxy that can blackhole traffic (connections stay open, bytes stop) or
deliver some of the server's replies in two pieces."""

import contextlib
import selectors
import socket
import threading
import time


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to a target; `freeze()` silently stops all forwarding.

    With `split`, a chunk from the server that contains those bytes reaches the client in two
    writes 50 ms apart (a reply read in pieces, as a large one, a TLS record or a busy link
    gives); `splits` counts them.
    """

    def __init__(self, target_port: int, split: bytes | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.split = split
        self.splits = 0
        self._upstreams: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._ignored: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._selector.close()
        for sock in [self.listener, *self._pairs, *self._ignored]:
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    self._accept()
                elif not self.frozen.is_set():
                    self._forward(sock)
            if self.frozen.is_set():
                self._stop.wait(0.05)  # hold the bytes: nothing is read, nothing is sent

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        if self.frozen.is_set():
            self._ignored.append(client)  # accepted and ignored, like a silent peer
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        self._upstreams.add(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            self._pairs[a] = b
            self._selector.register(a, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        try:
            data = sock.recv(65536)
            if data and peer is not None:
                if self.split and sock in self._upstreams and self.split in data:
                    self.splits += 1
                    peer.sendall(data[: len(data) // 2])
                    time.sleep(0.05)
                    data = data[len(data) // 2 :]
                peer.sendall(data)
                return
        except OSError:
            pass
        for end in (sock, peer):
            if end is not None and end in self._pairs:
                self._selector.unregister(end)
                self._pairs.pop(end, None)
                end.close()
