#!/usr/bin/env python3
"""A pipelining Valkyrie client with nothing but the standard library, for instruction counts.

Usage: ping-flood.py PORT CONNECTIONS BATCH ROUNDS

Opens CONNECTIONS connections to 127.0.0.1:PORT, sends HELLO on each, then ROUNDS times writes
BATCH 64-byte PINGs to every connection and reads all their PONGs back. Slow on purpose: the
node it drives runs under callgrind (scripts/callgrind-pings.sh), where only the node's
instruction count matters.
"""
import socket
import struct
import sys


def mp_str(b):
    return bytes([0xA0 + len(b)]) + b


def frame(msg_type, payload, corr=0):
    return b"RC" + bytes([2, msg_type, 0, 128, 0, 0]) + struct.pack(">IIII", 0, len(payload), corr, 0) + payload


HELLO = (
    b"\x85" + mp_str(b"versions") + b"\x91\x02"
    + mp_str(b"node_id") + mp_str(b"flood")
    + mp_str(b"security") + b"\x91" + mp_str(b"plaintext")
    + mp_str(b"max_frame") + b"\xce" + struct.pack(">I", 1 << 20)
    + mp_str(b"heartbeat_ms") + b"\xcd" + struct.pack(">H", 60000)
)


def read_exactly(s, n):
    while n:
        d = s.recv(min(n, 1 << 20))
        if not d:
            sys.exit("the node closed the connection")
        n -= len(d)


def main():
    port, conns, batch, rounds = (int(a) for a in sys.argv[1:5])
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(frame(0x00, HELLO))
        head = b""
        while len(head) < 24:
            head += s.recv(24 - len(head))
        read_exactly(s, struct.unpack(">I", head[12:16])[0])
        socks.append(s)
    wire = b"".join(frame(0x02, b"Z" * 64, i + 1) for i in range(batch))
    for _ in range(rounds):
        for s in socks:
            s.sendall(wire)
        for s in socks:
            read_exactly(s, len(wire))
    for s in socks:
        s.close()
    print(conns * batch * rounds, "PINGs answered")


if __name__ == "__main__":
    main()
