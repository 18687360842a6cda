#!/usr/bin/env python3
"""noise_xk interop: an independent Noise implementation (Python's `noiseprotocol`) completes
the Noise XK handshake with a Valkyrie node and exchanges a sealed PING / PONG.

    scripts/noise-interop.sh            # builds, makes keys, starts a node, runs this
    noise-interop.py HOST:PORT SERVER.pub CLIENT.key

Needs `pip install noiseprotocol msgpack`. Exit status 0 on success.
"""
import socket
import struct
import sys
import time

import msgpack
from noise.connection import Keypair, NoiseConnection

HELLO, HELLO_ACK, PING, PONG, ERROR, KEY_EXCHANGE = 0x00, 0x01, 0x02, 0x03, 0x04, 0x14
RESPONSE = 1 << 4
TAG = 16


def header(msg_type, length, flags=0, stream=0, corr=0):
    return b"RC" + bytes([2, msg_type, flags, 128, 0, 0]) + struct.pack(
        ">IIII", stream, length, corr, int(time.time()) & 0xFFFFFFFF
    )


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("node closed the connection")
        buf += chunk
    return buf


def read_frame(sock):
    head = read_exact(sock, 24)
    assert head[:2] == b"RC", head
    length = struct.unpack(">I", head[12:16])[0]
    return head, head[3], head[4], read_exact(sock, length)


def key_file(path):
    return bytes.fromhex(open(path).read().strip())


def main():
    addr, server_pub, client_key = sys.argv[1], key_file(sys.argv[2]), key_file(sys.argv[3])
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)

    hello = msgpack.packb(
        {
            "versions": [2],
            "node_id": "python-noise",
            "security": ["noise_xk"],
            "max_frame": 1 << 20,
            "heartbeat_ms": 60000,
        }
    )
    sock.sendall(header(HELLO, len(hello)) + hello)
    _, t, flags, ack = read_frame(sock)
    if t == ERROR:
        raise SystemExit(f"node refused HELLO: {msgpack.unpackb(ack)}")
    assert t == HELLO_ACK and flags & RESPONSE, (t, flags)
    assert msgpack.unpackb(ack)["security"] == "noise_xk"

    noise = NoiseConnection.from_name(b"Noise_XK_25519_ChaChaPoly_BLAKE2s")
    noise.set_as_initiator()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, client_key)
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, server_pub)
    noise.set_prologue(b"valkyrie-noise-xk/1" + hello + ack)
    noise.start_handshake()

    m1 = noise.write_message()
    sock.sendall(header(KEY_EXCHANGE, len(m1)) + m1)
    _, t, _, m2 = read_frame(sock)
    if t == ERROR:
        raise SystemExit(f"node refused the handshake: {msgpack.unpackb(m2)}")
    assert t == KEY_EXCHANGE, t
    noise.read_message(m2)
    m3 = noise.write_message()
    sock.sendall(header(KEY_EXCHANGE, len(m3)) + m3)
    assert noise.handshake_finished

    # A sealed PING: the header (with the sealed length) is the associated data.
    payload = b"ping from an independent Noise implementation"
    head = header(PING, len(payload) + TAG, corr=7)
    sealed = noise.noise_protocol.cipher_state_encrypt.encrypt_with_ad(head, payload)
    sock.sendall(head + sealed)
    head, t, flags, body = read_frame(sock)
    plain = noise.noise_protocol.cipher_state_decrypt.decrypt_with_ad(head, body)
    if t == ERROR:
        raise SystemExit(f"node answered ERROR: {msgpack.unpackb(plain)}")
    assert t == PONG and flags & RESPONSE, (t, flags)
    assert struct.unpack(">I", head[16:20])[0] == 7
    assert plain == payload, plain
    print("noise_xk interop: handshake and sealed PING/PONG with python noiseprotocol: ok")


if __name__ == "__main__":
    main()
