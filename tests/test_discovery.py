"""Real mDNS on loopback: announcements, filtering by run and schema, peers that vanish."""

import asyncio

import pytest

from peer.discovery.mdns import MdnsDiscovery, PeerRecord


async def _until(predicate, timeout=15.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "timed out waiting for mDNS"
        await asyncio.sleep(0.05)


def test_peers_of_the_same_run_find_each_other_and_others_are_ignored():
    async def scenario():
        found: dict[str, dict] = {"a": {}, "b": {}, "c": {}, "d": {}}
        lost: dict[str, list] = {"a": [], "b": [], "c": [], "d": []}

        def make(name, run, schema, port):
            record = PeerRecord(f"peer-{name}", run, f"127.0.0.1:{port}", 1, schema)
            return MdnsDiscovery(record, lambda r, n=name: found[n].__setitem__(r.peer_id, r.address),
                                 lambda pid, n=name: lost[n].append(pid), interfaces=["127.0.0.1"])

        a, b = make("a", "run-x", "s1", 40001), make("b", "run-x", "s1", 40002)
        other_run, other_schema = make("c", "run-y", "s1", 40003), make("d", "run-x", "s2", 40004)
        for d in (a, b, other_run, other_schema):
            await d.start()
        try:
            await _until(lambda: "peer-b" in found["a"] and "peer-a" in found["b"])
            assert found["a"]["peer-b"] == "127.0.0.1:40002"
            await asyncio.sleep(1.0)  # give the wrong ones every chance to show up
            assert set(found["a"]) == {"peer-b"} and set(found["b"]) == {"peer-a"}
            assert found["c"] == {} and found["d"] == {}
            await b.close()
            await _until(lambda: "peer-b" in lost["a"])
        finally:
            for d in (a, other_run, other_schema):
                await d.close()

    asyncio.run(scenario())
