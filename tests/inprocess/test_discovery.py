"""Real mDNS on loopback: announcements, filtering by run and schema, peers that vanish."""

import asyncio

import pytest

from peer.discovery.mdns import DuplicatePeerId, MdnsDiscovery, PeerRecord, Refusal, parse_record


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
            return MdnsDiscovery(
                record,
                lambda r, n=name: found[n].__setitem__(r.peer_id, r.address),
                lambda pid, address, n=name: lost[n].append(pid),
                interfaces=["127.0.0.1"],
            )

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


def test_records_that_do_not_parse_are_refused_with_a_reason_never_an_exception():
    good = {b"peer_id": b"peer-01", b"run_id": b"r", b"proto": b"2", b"schema": b"s"}
    assert parse_record(good, ["10.0.0.2"], 7070) == PeerRecord("peer-01", "r", "10.0.0.2:7070", 2, "s")
    cases = {
        Refusal.NOT_UTF8: ({**good, b"run_id": b"\xff\xfe"}, ["10.0.0.2"], 7070),
        Refusal.BAD_RECORD: ({**good, b"proto": b"abc"}, ["10.0.0.2"], 7070),
        Refusal.BAD_PEER_ID: ({**good, b"peer_id": b""}, ["10.0.0.2"], 7070),
    }
    for reason, args in cases.items():
        assert parse_record(*args)[0] is reason
    assert parse_record({**good, b"peer_id": b"p" * 200}, ["10.0.0.2"], 7070)[0] is Refusal.BAD_PEER_ID
    assert parse_record({**good, b"peer_id": b"a\nb"}, ["10.0.0.2"], 7070)[0] is Refusal.BAD_PEER_ID
    assert parse_record(good, [], 7070)[0] is Refusal.BAD_RECORD
    assert parse_record({**good, b"proto": None}, ["10.0.0.2"], 7070).protocol_version == 0


def test_odd_announcements_are_counted_and_a_second_daemon_with_the_same_id_is_told_so():
    # real mDNS on loopback: raw zeroconf services with odd TXT records, a peer id with dots, and a
    # second announcement of a peer id that is taken
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from peer.discovery.mdns import SERVICE_TYPE

    async def scenario():
        found, refused = {}, []
        a = MdnsDiscovery(
            PeerRecord("peer.a", "run-x", "127.0.0.1:40011", 1, "s"),
            lambda r: found.__setitem__(r.peer_id, r.address),
            lambda pid, address: None,
            interfaces=["127.0.0.1"],
            on_refused=lambda reason, detail, name: refused.append(reason),
        )
        b = MdnsDiscovery(
            PeerRecord("peer.b", "run-x", "127.0.0.1:40012", 1, "s"),
            lambda r: None,
            lambda pid, address: None,
            interfaces=["127.0.0.1"],
        )
        raw = AsyncZeroconf(ip_version=IPVersion.V4Only, interfaces=["127.0.0.1"])
        odd = [
            {"peer_id": "ghost", "run_id": b"\xff", "proto": "1", "schema": "s"},
            {"peer_id": "ghost2", "run_id": "run-x", "proto": "abc", "schema": "s"},
            {"peer_id": "", "run_id": "run-x", "proto": "1", "schema": "s"},
        ]
        await a.start()
        await b.start()
        try:
            for n, props in enumerate(odd):
                await raw.async_register_service(
                    AsyncServiceInfo(
                        SERVICE_TYPE,
                        f"odd{n}.{SERVICE_TYPE}",
                        addresses=[bytes([127, 0, 0, 1])],
                        port=40020 + n,
                        properties=props,
                    )
                )
            await _until(lambda: "peer.b" in found and len(refused) >= 3)
            assert found == {"peer.b": "127.0.0.1:40012"}
            assert sorted(refused) == sorted([Refusal.NOT_UTF8, Refusal.BAD_RECORD, Refusal.BAD_PEER_ID])
            twin = MdnsDiscovery(
                PeerRecord("peer.b", "run-x", "127.0.0.1:40013", 1, "s"),
                lambda r: None,
                lambda pid, address: None,
                interfaces=["127.0.0.1"],
            )
            with pytest.raises(DuplicatePeerId, match=r"already announces 'peer\.b'"):
                await twin.start()
            await twin.close()
        finally:
            for d in (a, b):
                await d.close()
            await raw.async_unregister_all_services()
            await raw.async_close()

    asyncio.run(scenario())
