"""A server the port tests run inside a sandbox (Python's standard library only: a template may
lack any WebSocket package). ``python3 ports_server.py PORT``:

- an HTTP request gets 200 and JSON: its method, target, header lines as received (names
  lower-cased, repeated ones all kept), and the length and SHA-256 of its body (Content-Length
  or chunked);
- a WebSocket upgrade (RFC 6455: the accept key by hashlib and base64) echoes every text and
  binary message, answers pings and closes when asked;
- ``/hang`` is read and never answered; ``/lengths`` is answered with two Content-Lengths
  that disagree (an app that is slow or lies on purpose).
"""

import base64
import hashlib
import json
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def body_of(f, headers):
    h = hashlib.sha256()
    size = 0
    if "content-length" in headers:
        left = int(headers["content-length"][0])
        while left:
            data = exact(f, min(left, 65536))
            h.update(data)
            size += len(data)
            left -= len(data)
    elif "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        while True:
            n = int(f.readline().split(b";")[0].strip(), 16)
            if n == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            data = exact(f, n)
            h.update(data)
            size += n
            f.readline()
    return size, h.hexdigest()


def send_frame(c, opcode, payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    c.sendall(head + payload)


def websocket(c, f, headers):
    key = headers["sec-websocket-key"][0].encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    c.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    message, kind = b"", 1
    while True:
        b1, b2 = exact(f, 2)
        opcode, n = b1 & 0x0F, b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", exact(f, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", exact(f, 8))[0]
        mask = exact(f, 4) if b2 & 0x80 else b"\0\0\0\0"
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(exact(f, n)))
        if opcode == 8:
            send_frame(c, 8, data[:2])
            return
        if opcode == 9:
            send_frame(c, 10, data)
            continue
        if opcode in (1, 2):
            message, kind = data, opcode
        elif opcode == 0:
            message += data
        if b1 & 0x80 and opcode in (0, 1, 2):
            send_frame(c, kind, message)


def handle(c):
    try:
        f = c.makefile("rb")
        method, target, _ = f.readline().decode("latin-1").split(" ", 2)
        lines, headers = [], {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            lines.append([name.strip().lower(), value.strip()])
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if headers.get("upgrade", [""])[0].lower() == "websocket":
            websocket(c, f, headers)
            return
        if target == "/hang":
            threading.Event().wait()
        if target == "/lengths":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello")
            return
        size, digest = body_of(f, headers)
        out = json.dumps(
            {"method": method, "target": target, "headers": lines, "size": size, "sha256": digest}
        ).encode()
        c.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-App: ports-server\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(out), out)
        )
    except (EOFError, OSError, ValueError):
        pass
    finally:
        c.close()


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
