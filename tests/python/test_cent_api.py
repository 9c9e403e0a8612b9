"""The unmodified PyPI server-API SDK `cent` (v5 API) against Herald: every method it has for the
server API Herald implements, with an unmodified `centrifuge-python` client on the receiving side
where a method acts on live connections: publish (idempotency_key, skip_history, tags -> offset and
epoch), broadcast, subscribe, unsubscribe, disconnect with a custom code and reason, refresh,
presence, presence_stats, history, history_remove, channels, info; a wrong API key is refused (401).
Prints a JSON summary; any failed check raises (non-zero exit)."""

import asyncio
import json
import sys
import time

from cent import (
    BroadcastRequest,
    ChannelsRequest,
    Client as Cent,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentUnauthorizedError
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from common import API_KEY, URL, WS, data_of, next_of, nothing_in, token

cent = Cent(f"{URL}/api", API_KEY)
done = []


def check(name):
    done.append(name)


class Events(ClientEventHandler):
    """Every client-level event, queued by kind."""

    def __init__(self):
        self.queues = {k: asyncio.Queue() for k in ("connected", "connecting", "disconnected", "subscribed", "unsubscribed", "publication")}

    async def on_connected(self, ctx):
        await self.queues["connected"].put(ctx)

    async def on_connecting(self, ctx):
        await self.queues["connecting"].put(ctx)

    async def on_disconnected(self, ctx):
        await self.queues["disconnected"].put(ctx)

    async def on_subscribed(self, ctx):
        await self.queues["subscribed"].put(ctx)

    async def on_unsubscribed(self, ctx):
        await self.queues["unsubscribed"].put(ctx)

    async def on_publication(self, ctx):
        await self.queues["publication"].put(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self):
        self.publications = asyncio.Queue()
        self.unsubscribed = asyncio.Queue()

    async def on_publication(self, ctx):
        await self.publications.put(ctx.pub)

    async def on_unsubscribed(self, ctx):
        await self.unsubscribed.put(ctx)


async def client_of(user):
    events = Events()
    client = Client(WS, events=events, token=token(user), min_reconnect_delay=0.1, max_reconnect_delay=0.5)
    await client.connect()
    connected = await next_of(events.queues["connected"], f"{user} connected")
    # The connect itself was announced as connecting: only later ones matter.
    while not events.queues["connecting"].empty():
        events.queues["connecting"].get_nowait()
    return client, events, connected.client


async def main():
    alice, alice_events, _ = await client_of("cent-alice")
    feed_events = SubEvents()
    feed = alice.new_subscription("hist:cent-feed", events=feed_events, recoverable=True)
    await feed.subscribe()
    await feed.ready(5)

    # publish: offset and epoch; tags reach the client; a repeated idempotency key is not delivered again.
    first = cent.publish(PublishRequest(channel="hist:cent-feed", data={"n": 1}, tags={"kind": "test"}))
    assert first.offset == 1 and first.epoch, first
    pub = await next_of(feed_events.publications, "publication 1")
    assert data_of(pub.data) == {"n": 1} and pub.offset == 1 and pub.tags == {"kind": "test"}, pub
    keyed = cent.publish(PublishRequest(channel="hist:cent-feed", data={"n": 2}, idempotency_key="cent-once"))
    repeat = cent.publish(PublishRequest(channel="hist:cent-feed", data={"n": 2}, idempotency_key="cent-once"))
    assert keyed.offset == 2 and (repeat.offset, repeat.epoch) == (keyed.offset, keyed.epoch), (keyed, repeat)
    assert (await next_of(feed_events.publications, "publication 2")).offset == 2
    await nothing_in(feed_events.publications, "repeat of an idempotent publish")
    skipped = cent.publish(PublishRequest(channel="hist:cent-feed", data={"n": "live"}, skip_history=True))
    assert skipped.offset == 0, skipped
    assert data_of((await next_of(feed_events.publications, "skip_history publication")).data) == {"n": "live"}
    check("publish")

    # history: what was kept (not the skip_history one), newest first with reverse.
    history = cent.history(HistoryRequest(channel="hist:cent-feed", limit=10))
    assert [data_of(p.data) for p in history.publications] == [{"n": 1}, {"n": 2}], history
    assert (history.offset, history.epoch) == (2, first.epoch), history
    newest = cent.history(HistoryRequest(channel="hist:cent-feed", limit=1, reverse=True))
    assert [p.offset for p in newest.publications] == [2], newest
    check("history")

    # broadcast: one result per channel.
    broadcast = cent.broadcast(BroadcastRequest(channels=["hist:cent-feed", "cent-room"], data={"all": True}))
    assert len(broadcast.responses) == 2 and broadcast.responses[0].result.offset == 3, broadcast
    assert data_of((await next_of(feed_events.publications, "broadcast")).data) == {"all": True}
    check("broadcast")

    # presence, presence_stats, channels, info see the connected client.
    presence = cent.presence(PresenceRequest(channel="hist:cent-feed"))
    assert [c.user for c in presence.presence.values()] == ["cent-alice"], presence
    stats = cent.presence_stats(PresenceStatsRequest(channel="hist:cent-feed"))
    assert (stats.num_clients, stats.num_users) == (1, 1), stats
    check("presence")
    check("presence_stats")
    channels = cent.channels(ChannelsRequest(pattern="hist:cent-*"))
    assert {name: c.num_clients for name, c in channels.channels.items()} == {"hist:cent-feed": 1}, channels
    check("channels")
    info = cent.info(InfoRequest())
    assert len(info.nodes) == 1 and info.nodes[0].num_clients >= 1 and info.nodes[0].name, info
    check("info")

    # history_remove: the stream is emptied.
    cent.history_remove(HistoryRemoveRequest(channel="hist:cent-feed"))
    assert cent.history(HistoryRequest(channel="hist:cent-feed", limit=10)).publications == []
    check("history_remove")

    # subscribe: a server-side subscription of one client of the user; publications follow.
    bob, bob_events, bob_id = await client_of("cent-bob")
    bob2, bob2_events, _ = await client_of("cent-bob")
    cent.subscribe(SubscribeRequest(user="cent-bob", client=bob_id, channel="cent-news", data={"welcome": 1}))
    subscribed = await next_of(bob_events.queues["subscribed"], "server-side subscribed event")
    assert subscribed.channel == "cent-news" and subscribed.data == {"welcome": 1}, subscribed
    cent.publish(PublishRequest(channel="cent-news", data={"headline": "hi"}))
    server_pub = await next_of(bob_events.queues["publication"], "server-side publication")
    assert server_pub.channel == "cent-news" and data_of(server_pub.pub.data) == {"headline": "hi"}, server_pub
    await nothing_in(bob2_events.queues["subscribed"], "subscription of the other client")
    check("subscribe")

    # unsubscribe: the user's client subscription ends with an unsubscribe push (code 2000).
    room_events = SubEvents()
    room = bob2.new_subscription("cent-room", events=room_events)
    await room.subscribe()
    await room.ready(5)
    cent.unsubscribe(UnsubscribeRequest(user="cent-bob", channel="cent-room"))
    unsubscribed = await next_of(room_events.unsubscribed, "unsubscribed event")
    assert unsubscribed.code == 2000, unsubscribed
    cent.publish(PublishRequest(channel="cent-room", data={"after": True}))
    await nothing_in(room_events.publications, "publication after unsubscribe")
    # ...and a server-side one the same way.
    cent.unsubscribe(UnsubscribeRequest(user="cent-bob", channel="cent-news"))
    server_unsub = await next_of(bob_events.queues["unsubscribed"], "server-side unsubscribed event")
    assert server_unsub.channel == "cent-news", server_unsub
    check("unsubscribe")

    # refresh: expired closes with 3005 and the client reconnects; expire_at is honoured (1 s grace).
    cent.refresh(RefreshRequest(user="cent-bob", client=bob_id, expired=True))
    connecting = await next_of(bob_events.queues["connecting"], "connecting after refresh expired")
    assert connecting.code == 3005, connecting
    # A new connection: a new client id.
    bob_id = (await next_of(bob_events.queues["connected"], "reconnected after refresh expired")).client
    await nothing_in(bob2_events.queues["connecting"], "refresh of the other client")
    # A new expiry, already due: the connection expires once the grace (1 s in this config) is over.
    cent.refresh(RefreshRequest(user="cent-bob", client=bob_id, expire_at=int(time.time())))
    connecting = await next_of(bob_events.queues["connecting"], "connecting after expire_at", timeout=6)
    assert connecting.code == 3005, connecting
    bob_id = (await next_of(bob_events.queues["connected"], "reconnected after expire_at")).client
    check("refresh")

    # disconnect: a custom terminal code and reason; the whitelisted client stays.
    cent.disconnect(DisconnectRequest(user="cent-bob", whitelist=[bob_id], disconnect=Disconnect(code=4501, reason="cent says bye")))
    gone = await next_of(bob2_events.queues["disconnected"], "disconnected event")
    assert (gone.code, gone.reason) == (4501, "cent says bye"), gone
    await nothing_in(bob_events.queues["disconnected"], "disconnect of the whitelisted client")
    cent.disconnect(DisconnectRequest(user="cent-bob", disconnect=Disconnect(code=4502, reason="all of you")))
    gone = await next_of(bob_events.queues["disconnected"], "disconnected event of the last client")
    assert (gone.code, gone.reason) == (4502, "all of you"), gone
    check("disconnect")

    # A wrong API key is refused.
    try:
        Cent(f"{URL}/api", "wrong-key").publish(PublishRequest(channel="cent-room", data={}))
        raise AssertionError("a wrong API key was accepted")
    except CentUnauthorizedError:
        check("unauthorized")

    for c in (alice, bob, bob2):
        await c.disconnect()
    print(json.dumps({"checked": done}))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 90))
    sys.exit(0)
