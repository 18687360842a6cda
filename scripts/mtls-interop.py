#!/usr/bin/env python3
"""mtls interop: `openssl s_client` with a client certificate connects to a Valkyrie node that
requires mtls; through that TLS tunnel this script sends HELLO (offering mtls) and a PING and
checks the HELLO_ACK and the PONG. Then s_client without a certificate, and with a certificate
from another CA, must be refused.

    scripts/mtls-interop.sh                 # builds, makes a dev PKI, starts a node, runs this
    mtls-interop.py HOST:PORT DIR           # DIR holds ca.crt, agent.crt/.key, rogue.crt/.key

Python standard library and the `openssl` command only. Exit status 0 on success.
"""
import os
import struct
import subprocess
import sys
import time

HELLO, HELLO_ACK, PING, PONG, ERROR = 0x00, 0x01, 0x02, 0x03, 0x04
RESPONSE = 1 << 4


def header(msg_type, length, flags=0, stream=0, corr=0):
    return b"RC" + bytes([2, msg_type, flags, 128, 0, 0]) + struct.pack(
        ">IIII", stream, length, corr, int(time.time()) & 0xFFFFFFFF
    )


def mp_str(s):
    b = s.encode()
    assert len(b) < 32
    return bytes([0xA0 | len(b)]) + b


def hello_payload():
    # MessagePack by hand (a map of five entries), so only the standard library is needed.
    return (
        b"\x85"
        + mp_str("versions") + b"\x91\x02"
        + mp_str("node_id") + mp_str("openssl-s_client")
        + mp_str("security") + b"\x91" + mp_str("mtls")
        + mp_str("max_frame") + b"\xce" + struct.pack(">I", 1 << 20)
        + mp_str("heartbeat_ms") + b"\xce" + struct.pack(">I", 60000)
    )


def frames(data):
    out = []
    while len(data) >= 24 and data[:2] == b"RC":
        length = struct.unpack(">I", data[12:16])[0]
        if len(data) < 24 + length:
            break
        out.append((data[3], data[4], struct.unpack(">I", data[16:20])[0], data[24 : 24 + length]))
        data = data[24 + length :]
    return out


def s_client(addr, cert, key, ca, send):
    args = ["openssl", "s_client", "-quiet", "-connect", addr, "-CAfile", ca, "-tls1_3",
            "-verify_return_error"]
    if cert:
        args += ["-cert", cert, "-key", key]
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    # Keep stdin open for a moment: s_client stops when it reaches end of input.
    p.stdin.write(send)
    p.stdin.flush()
    time.sleep(1.0)
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return out, err.decode(errors="replace")


def main():
    addr, d = sys.argv[1], sys.argv[2]
    ca = os.path.join(d, "ca.crt")
    hello = hello_payload()
    ping = b"ping through openssl s_client"
    send = header(HELLO, len(hello)) + hello + header(PING, len(ping), corr=9) + ping

    out, err = s_client(addr, os.path.join(d, "agent.crt"), os.path.join(d, "agent.key"), ca, send)
    got = frames(out)
    types = [t for t, _, _, _ in got]
    if ERROR in types:
        raise SystemExit(f"node answered ERROR: {got}\n{err}")
    assert HELLO_ACK in types and PONG in types, (got, err)
    ack = next(p for t, _, _, p in got if t == HELLO_ACK)
    assert b"mtls" in ack, ack
    pong = next((f, c, p) for t, f, c, p in got if t == PONG)
    assert pong[0] & RESPONSE and pong[1] == 9 and pong[2] == ping, pong
    print("mtls interop: openssl s_client with a client certificate: HELLO_ACK (mtls) and PONG: ok")

    out, err = s_client(addr, None, None, ca, send)
    assert not frames(out), "a client without a certificate got frames"
    print("mtls interop: openssl s_client without a client certificate: refused: ok")

    out, err = s_client(addr, os.path.join(d, "rogue.crt"), os.path.join(d, "rogue.key"), ca, send)
    assert not frames(out), "a certificate from another CA got frames"
    print("mtls interop: openssl s_client with a certificate from another CA: refused: ok")


if __name__ == "__main__":
    main()
