#!/usr/bin/env python3
"""QUIC interop: aioquic (an independent QUIC implementation) against a Valkyrie node started
with --listen quic://... . It connects with ALPN valkyrie/2, sends HELLO and PINGs on its
first bidirectional stream and checks the HELLO_ACK and the PONGs; then it resumes with the
session ticket the node issued and sends HELLO and a PING as 0-RTT early data, and checks
that the node took them and that the PONG came in the node's first flight: everything this
client would send after its first flight (its handshake Finished, its acknowledgements) is
held back until the PONG has arrived, so the node answered from the first flight alone.
Last, a JOB_REQUEST in early data must be answered with ERROR 706 (too early).

    quic-interop.py HOST:PORT CA.crt SERVER_NAME

Needs `pip install aioquic`. Exit status 0 on success.
"""
import asyncio
import ssl
import struct
import sys
import time

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

HELLO, HELLO_ACK, PING, PONG, ERROR = 0x00, 0x01, 0x02, 0x03, 0x04
JOB_REQUEST = 0x20
RESPONSE = 1 << 4


def frame(msg_type, payload, corr=0):
    return (
        b"RC"
        + bytes([2, msg_type, 0, 128, 0, 0])
        + struct.pack(">IIII", 0, len(payload), corr, int(time.time()) & 0xFFFFFFFF)
        + payload
    )


def mp_str(s):
    b = s.encode()
    assert len(b) < 32
    return bytes([0xA0 | len(b)]) + b


def hello():
    # MessagePack by hand (a map of five entries).
    return frame(
        HELLO,
        b"\x85"
        + mp_str("versions") + b"\x91\x02"
        + mp_str("node_id") + mp_str("aioquic")
        + mp_str("security") + b"\x91" + mp_str("plaintext")
        + mp_str("max_frame") + b"\xce" + struct.pack(">I", 1 << 20)
        + mp_str("heartbeat_ms") + b"\xce" + struct.pack(">I", 60000),
    )


def parse(data):
    """Whole frames in `data` as (type, flags, correlation, payload), and the rest."""
    out = []
    while len(data) >= 24 and data[:2] == b"RC":
        length = struct.unpack(">I", data[12:16])[0]
        if len(data) < 24 + length:
            break
        out.append((data[3], data[4], struct.unpack(">I", data[16:20])[0], data[24 : 24 + length]))
        data = data[24 + length :]
    return out, data


class Peer(QuicConnectionProtocol):
    """Collects the frames of stream 0; counts the datagrams sent, and holds back those
    sent after `hold_after` of them until `release()`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rest = b""
        self.frames = []
        self.sent = 0
        self.hold_after = None
        self.held = []
        self.changed = asyncio.Event()

    def connection_made(self, transport):
        sendto = transport.sendto
        self._sendto = sendto

        def counting(data, addr=None):
            if self.hold_after is not None and self.sent >= self.hold_after:
                self.held.append((data, addr))
                return None
            self.sent += 1
            return sendto(data, addr)

        transport.sendto = counting
        super().connection_made(transport)

    def release(self):
        self.hold_after = None
        for data, addr in self.held:
            self._sendto(data, addr)
        self.held = []

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id == 0:
            got, self.rest = parse(self.rest + event.data)
            self.frames.extend(got)
            self.changed.set()

    async def wait_for(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not pred(self.frames):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"timed out; frames so far: {[(t, c) for t, _, c, _ in self.frames]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


def configuration(ca, name, ticket=None):
    c = QuicConfiguration(is_client=True, alpn_protocols=["valkyrie/2"], server_name=name)
    c.load_verify_locations(ca)
    c.verify_mode = ssl.CERT_REQUIRED
    if ticket is not None:
        c.session_ticket = ticket
    return c


def types(frames):
    return [t for t, _, _, _ in frames]


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    port = int(port)
    ca, name = sys.argv[2], sys.argv[3]
    tickets = []

    # 1. A full handshake: HELLO and PINGs on the first bidirectional stream.
    async with connect(host, port, configuration=configuration(ca, name),
                       create_protocol=Peer, session_ticket_handler=tickets.append) as p:
        sid = p._quic.get_next_available_stream_id()
        assert sid == 0, sid
        p._quic.send_stream_data(sid, hello() + b"".join(frame(PING, b"p%d" % i, i + 1) for i in range(5)))
        p.transmit()
        await p.wait_for(lambda fs: types(fs).count(PONG) == 5)
        fs = p.frames
        assert fs[0][0] == HELLO_ACK and fs[0][1] & RESPONSE, fs[0]
        pongs = [(c, pl) for t, _, c, pl in fs if t == PONG]
        assert pongs == [(i + 1, b"p%d" % i) for i in range(5)], pongs
        print("aioquic: HELLO_ACK and 5 PONGs over ALPN", p._quic.tls.alpn_negotiated)
        deadline = time.monotonic() + 5
        while not tickets and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert tickets, "the node issued no session ticket"

    # 2. Resumed with 0-RTT: HELLO and a PING in early data, the PONG in the first flight back.
    # (A ticket is good for one use: the node keeps no replayable early data.)
    used = len(tickets)
    async with connect(host, port, configuration=configuration(ca, name, tickets[-1]),
                       create_protocol=Peer, session_ticket_handler=tickets.append,
                       wait_connected=False) as p:
        sid = p._quic.get_next_available_stream_id()
        p._quic.send_stream_data(sid, hello() + frame(PING, b"early", 77))
        p.transmit()
        first_flight = p.sent
        assert first_flight >= 1
        # Nothing more leaves until the PONG is in: the node has only the first flight.
        p.hold_after = first_flight
        await p.wait_for(lambda fs: PONG in types(fs))
        held = len(p.held)
        p.release()
        i = types(p.frames).index(PONG)
        assert p.frames[i][2] == 77 and p.frames[i][3] == b"early", p.frames[i]
        assert p._quic.tls.session_resumed, "the session was not resumed"
        assert p._quic.tls.early_data_accepted, "the node refused the early data"
        print(f"aioquic: 0-RTT accepted, PONG in the node's first flight "
              f"({first_flight} datagrams sent, {held} held back until it came)")
        # The handshake completes once the held datagrams are out (aioquic's wait_connected
        # would miss a completion that came before it was called).
        deadline = time.monotonic() + 5
        while not p._quic._handshake_complete and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert p._quic._handshake_complete
        while len(tickets) == used and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(tickets) > used, "no fresh ticket after the resumed handshake"

    # 3. A request in early data is refused with 706 (too early), the connection kept.
    async with connect(host, port, configuration=configuration(ca, name, tickets[-1]),
                       create_protocol=Peer, wait_connected=False) as p:
        sid = p._quic.get_next_available_stream_id()
        p._quic.send_stream_data(sid, hello() + frame(JOB_REQUEST, b"{}", 5) + frame(PING, b"after", 6))
        p.transmit()
        await p.wait_for(lambda fs: PONG in types(fs) and ERROR in types(fs))
        assert JOB_REQUEST not in types(p.frames), "the early request was served"
        err = [f for f in p.frames if f[0] == ERROR][0]
        assert err[2] == 5, err
        assert p._quic.tls.early_data_accepted
        # The payload's code field: 706 as a MessagePack uint16.
        assert b"\xcd\x02\xc2" in err[3], err
        print("aioquic: a JOB_REQUEST in 0-RTT answered with ERROR 706, PING still answered")


asyncio.run(main())
