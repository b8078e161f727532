#!/usr/bin/env python3
"""A tiny stand-in for the Voyager gateway (protocol 1), standard library only.

Hand-rolled WebSocket server (RFC 6455) on asyncio. It answers hello with
welcome, ask with two deltas (the first sent as two fragments, with a ping
in between) and a reply carrying actions, rate with rated, link with linked,
ping with pong. Every frame and event is appended to a JSON-lines log so the
smoke test can check what the mod sent.

  fake_gateway.py --port-file F --token T --log L [--drop-first] [--noise]
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys
import uuid

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Closed(Exception):
    pass


def frame(opcode, payload=b"", fin=True):
    b1 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b1, n)
    elif n < 65536:
        head = struct.pack("!BBH", b1, 126, n)
    else:
        head = struct.pack("!BBQ", b1, 127, n)
    return head + payload


async def read_frame(reader):
    b1, b2 = await reader.readexactly(2)
    n = b2 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    if not b2 & 0x80:
        raise ValueError("client frame not masked")
    mask = await reader.readexactly(4)
    data = bytearray(await reader.readexactly(n))
    for i in range(n):
        data[i] ^= mask[i % 4]
    return b1 & 0x80, b1 & 0x0F, bytes(data)


class Gateway:
    def __init__(self, args):
        self.args = args
        self.connections = 0
        self.log_file = open(args.log, "a", buffering=1)

    def log(self, **entry):
        self.log_file.write(json.dumps(entry) + "\n")

    async def handle(self, reader, writer):
        self.connections += 1
        conn_no = self.connections
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = request.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            self.log(event="handshake", conn=conn_no, request_line=lines[0], headers=headers)
            if headers.get("authorization") != "Bearer " + self.args.token:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                self.log(event="refused", conn=conn_no)
                return
            key = headers.get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
            await writer.drain()
            if self.args.drop_first and conn_no == 1:
                # Exercise the mod's reconnect: close right away with a server error code.
                writer.write(frame(0x8, struct.pack("!H", 1011) + b"try again"))
                await writer.drain()
                self.log(event="dropped", conn=conn_no)
                await asyncio.sleep(0.2)
                return
            await self.serve(conn_no, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, Closed):
            pass
        except Exception as exc:  # keep serving other connections
            self.log(event="exception", conn=conn_no, error=repr(exc))
        finally:
            self.log(event="disconnect", conn=conn_no)
            writer.close()

    async def send(self, writer, obj):
        writer.write(frame(0x1, json.dumps(obj).encode()))
        await writer.drain()

    async def serve(self, conn_no, reader, writer):
        while True:
            fin, opcode, data = await read_frame(reader)
            if opcode == 0x8:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                self.log(event="close", conn=conn_no, code=code)
                writer.write(frame(0x8, data[:2]))
                await writer.drain()
                raise Closed()
            if opcode == 0xA:
                self.log(event="pong", conn=conn_no, data=data.decode("latin-1"))
                continue
            if opcode == 0x9:
                writer.write(frame(0xA, data))
                continue
            if opcode != 0x1 or not fin:
                self.log(event="unexpected_frame", conn=conn_no, opcode=opcode, fin=bool(fin))
                continue
            msg = json.loads(data.decode("utf-8"))
            self.log(event="in", conn=conn_no, frame=msg, raw=data.decode("utf-8"))
            kind = msg.get("type")
            if kind == "hello":
                await self.send(writer, {"type": "welcome", "protocol": 1, "personas": ["guide", "smith"]})
                if self.args.noise:
                    # A frame with a 64-bit length, and an unknown type the mod must ignore.
                    await self.send(writer, {"type": "noise", "pad": "x" * 70000})
            elif kind == "ask":
                aid = msg["id"]
                part = json.dumps({"type": "delta", "id": aid, "text": "Hello there, "}).encode()
                writer.write(frame(0x1, part[:10], fin=False))
                writer.write(frame(0x9, b"are-you-there"))  # control frame between fragments
                writer.write(frame(0x0, part[10:], fin=True))
                await writer.drain()
                await asyncio.sleep(0.3)
                await self.send(writer, {"type": "delta", "id": aid, "text": "traveller! I will hop."})
                await asyncio.sleep(0.3)
                await self.send(writer, {
                    "type": "reply", "id": aid, "exchange": str(uuid.uuid4()),
                    "text": "Hello there, traveller! I will hop.",
                    "actions": [
                        {"name": "jump", "args": []},
                        {"name": "move", "args": ["1", "0", "0"]},
                        {"name": "say", "args": ["Welcome", "to", "devtest!"]},
                        {"name": "dance", "args": []},
                    ],
                    "blocked": [{"name": "give", "args": ["default:diamond", "64"], "rule": "no_valuables"}],
                })
            elif kind == "rate":
                await self.send(writer, {"type": "rated", "exchange": msg.get("exchange")})
            elif kind == "link":
                await self.send(writer, {"type": "linked", "player": msg.get("player")})
            elif kind == "ping":
                await self.send(writer, {"type": "pong"})
            elif kind == "cancel":
                pass
            else:
                await self.send(writer, {"type": "error", "id": msg.get("id"), "code": "invalid",
                                         "message": "unknown type"})


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--token", default="smoke-token")
    parser.add_argument("--log", required=True)
    parser.add_argument("--drop-first", action="store_true")
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    gw = Gateway(args)
    server = await asyncio.start_server(gw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, args.port_file)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), args.lifetime)
        except asyncio.TimeoutError:
            pass


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
