#!/usr/bin/env python3
"""permessage-deflate interop with the Python `websockets` library.

Usage: ws_deflate_interop.py WS_URL ADMIN_URL

Connects to WS_URL (a channel subscription URL) with websockets' default
compression (it offers permessage-deflate), checks the gateway's answer,
publishes a ~2 KB state value through ADMIN_URL/publish/{channel} and checks
that it arrives intact; then sends a compressed publish command (the channel
must allow client publishing) and checks the ack and the echo. websockets
inflates and deflates itself, so a wrong frame fails here. Prints `interop:
ok` and exits 0, or raises.
"""
import asyncio
import json
import sys
import urllib.request

import websockets


def board(n):
    return {"round": n, "table": [{"team": "Team %02d" % i, "points": (i * 13 + n) % 97,
                                   "form": "WWLDW"} for i in range(24)]}


async def main(ws_url, admin_url):
    channel = ws_url.rstrip("/").rsplit("/", 1)[1]
    async with websockets.connect(ws_url, compression="deflate", max_size=2**20) as ws:
        answer = ws.response_headers.get("Sec-WebSocket-Extensions", "")
        assert answer.startswith("permessage-deflate"), answer
        assert "server_no_context_takeover" in answer, answer
        assert any(type(e).__name__ == "PerMessageDeflate" for e in ws.extensions), ws.extensions

        async def envelope():
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if "type" not in msg:
                    return msg

        async def control(kind):
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg.get("type") == kind:
                    return msg

        await control("subscribed")
        for n in range(1, 4):
            body = json.dumps(board(n)).encode()
            req = urllib.request.Request(admin_url + "/publish/" + channel, data=body,
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).read()
            got = await envelope()
            assert got["data"] == board(n), got
        # websockets compresses what it sends (context takeover kept).
        for n in range(2):
            await ws.send(json.dumps({"type": "publish", "channel": channel,
                                      "data": {"from": "python", "n": n, "pad": "y" * 2000}}))
            ack = await control("published")
            assert ack["channel"] == channel, ack
            got = await envelope()
            assert got["data"]["n"] == n and got["data"]["pad"] == "y" * 2000, got
    print("interop: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
