"""The unmodified PyPI client `centrifuge-python` against Herald's Centrifugo front: connect with an
HS256 JWT, subscribe, receive an API publication and its own, presence, presence stats, history, and
recovery: publications made while the client was away arrive after it reconnects, in order, with
`recovered` true. Run once with JSON and once with protobuf (HERALD_PROTOBUF=1). Prints a JSON summary;
any failed check raises (non-zero exit)."""

import asyncio
import json
import os
import sys

from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from common import WS, api, data_of, next_of, token

PROTOBUF = os.environ.get("HERALD_PROTOBUF") == "1"
CHANNEL = "hist:py-" + ("protobuf" if PROTOBUF else "json")


class Events(ClientEventHandler):
    def __init__(self):
        self.connected = asyncio.Queue()

    async def on_connected(self, ctx):
        await self.connected.put(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self):
        self.subscribed = asyncio.Queue()
        self.publications = asyncio.Queue()

    async def on_subscribed(self, ctx):
        await self.subscribed.put(ctx)

    async def on_publication(self, ctx):
        await self.publications.put(ctx.pub)


async def main():
    user = "py-alice-" + ("pb" if PROTOBUF else "json")
    events = Events()
    client = Client(WS, events=events, token=token(user), use_protobuf=PROTOBUF, min_reconnect_delay=0.1)
    await client.connect()
    connected = await next_of(events.connected, "connected event")
    assert connected.client, "the connect reply names the client"

    sub_events = SubEvents()
    sub = client.new_subscription(CHANNEL, events=sub_events, recoverable=True)
    await sub.subscribe()
    first = await next_of(sub_events.subscribed, "subscribed event")
    assert first.recoverable, "the namespace allows recovery"
    assert not first.was_recovering

    # An API publication, then the client's own.
    published = api("publish", {"channel": CHANNEL, "data": {"n": 1}})
    assert published["result"]["offset"] == 1, published
    pub = await next_of(sub_events.publications, "publication 1")
    assert data_of(pub.data) == {"n": 1} and pub.offset == 1, pub
    await sub.publish(b'{"n":2}' if PROTOBUF else {"n": 2})
    pub = await next_of(sub_events.publications, "publication 2")
    assert data_of(pub.data) == {"n": 2} and pub.offset == 2, pub
    assert pub.info is not None and pub.info.user == user, "a client publication names its publisher"

    presence = await sub.presence()
    assert [c.user for c in presence.clients.values()] == [user], presence
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1), stats
    history = await sub.history(limit=10)
    assert [data_of(p.data)["n"] for p in history.publications] == [1, 2], history
    assert history.offset == 2 and history.epoch, history

    # Away: the client disconnects, three publications are made, it connects again and recovers them.
    await client.disconnect()
    for n in (3, 4, 5):
        api("publish", {"channel": CHANNEL, "data": {"n": n}})
    await client.connect()
    await next_of(events.connected, "reconnected event")
    again = await next_of(sub_events.subscribed, "resubscribed event")
    assert again.was_recovering and again.recovered, again
    recovered = [await next_of(sub_events.publications, f"recovered publication {n}") for n in (3, 4, 5)]
    assert [(data_of(p.data)["n"], p.offset) for p in recovered] == [(3, 3), (4, 4), (5, 5)], recovered

    await client.disconnect()
    print(json.dumps({"protobuf": PROTOBUF, "client": connected.client, "recovered": [p.offset for p in recovered]}))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 60))
    sys.exit(0)
