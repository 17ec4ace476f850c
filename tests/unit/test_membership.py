"""Membership on a shared LAN (issue 12, part 1): an address for a known peer id changes only when the
new address proves the id, a goodbye removes a peer only at its own address, and over TLS nothing that
cannot complete the handshake is ever admitted. A scripted transport stands in for the network."""

import asyncio

import pytest

from peer.daemon import membership as membership_module
from peer.daemon.membership import Membership
from peer.transport.base import ExchangeFailed, HandshakeRefused, StatusInfo

RUN = "lab-run"


class ScriptedTransport:
    """``answers[address]``: the StatusInfo that address gives, or an exception it raises;
    ``certificates[address]``: the peer id its TLS certificate names (a call that expects another
    fails its handshake)."""

    def __init__(self, answers, certificates=None):
        self.answers, self.asked, self.certificates = answers, [], certificates or {}

    async def status(self, address, timeout, expect=None):
        self.asked.append(address)
        named = self.certificates.get(address)
        if expect is not None and named is not None and named != expect:
            raise HandshakeRefused(f"{address}: certificate of {named}, not {expect}")
        answer = self.answers.get(address, ExchangeFailed("connection refused"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def _member(answers, tls=False):
    refused = []
    m = Membership(
        "peer-00",
        RUN,
        b"digest",
        ScriptedTransport(answers),
        tls,
        lambda reason, detail, source: refused.append(reason),
    )
    return m, refused


def _status(peer_id, run=RUN):
    return StatusInfo(peer_id=peer_id, run_id=run, round=0, phase="B", schema_digest=b"digest")


async def _settle(m):
    while m.admissions or m.checks:
        await asyncio.gather(*m.admissions.values(), *m.checks, return_exceptions=True)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(membership_module, "ADMISSION_RETRY_S", 0.0)


def test_a_fake_announcement_of_a_known_id_cannot_take_its_place_nor_say_goodbye_for_it():
    async def scenario():
        m, refused = _member({"10.0.0.2:7070": _status("peer-02"), "10.0.0.9:7070": _status("mallory")})
        m.add_peer("peer-02", "10.0.0.2:7070")
        await _settle(m)
        m.add_peer("peer-02", "10.0.0.66:1")  # a dead port: never answers
        m.add_peer("peer-02", "10.0.0.9:7070")  # answers, as someone else
        await _settle(m)
        assert m.known == {"peer-02": "10.0.0.2:7070"} and refused == ["identity"]
        m.remove_peer("peer-02", "10.0.0.66:1")  # the fakes' goodbyes
        m.remove_peer("peer-02", "10.0.0.9:7070")
        m.remove_peer("peer-02", "10.0.0.2:7070")  # a forged goodbye for the real service name
        await _settle(m)
        assert m.known == {"peer-02": "10.0.0.2:7070"}
        del m.transport.answers["10.0.0.2:7070"]  # the real peer stops, and says goodbye
        m.remove_peer("peer-02", "10.0.0.2:7070")
        await _settle(m)
        assert m.known == {}

    asyncio.run(scenario())


def test_a_peer_that_restarts_at_a_new_address_proves_it_and_moves():
    async def scenario():
        m, refused = _member({"10.0.0.2:7070": _status("peer-02"), "10.0.0.2:7071": _status("peer-02")})
        m.add_peer("peer-02", "10.0.0.2:7070")
        await _settle(m)
        m.add_peer("peer-02", "10.0.0.2:7071")
        await _settle(m)
        assert m.known == {"peer-02": "10.0.0.2:7071"} and refused == []

    asyncio.run(scenario())


def test_over_tls_a_peer_that_cannot_complete_the_handshake_or_never_answers_is_never_admitted():
    async def scenario():
        m, refused = _member(
            {"10.0.0.3:7070": HandshakeRefused("TLS handshake failed"), "10.0.0.4:7070": _status("peer-04")}, tls=True
        )
        m.add_peer("peer-03", "10.0.0.3:7070")  # no certificate of the run
        m.add_peer("peer-05", "10.0.0.5:7070")  # silent, whatever the retries say
        m.add_peer("peer-04", "10.0.0.4:7070")  # a member
        await _settle(m)
        assert m.known == {"peer-04": "10.0.0.4:7070"} and refused == ["membership"]
        assert m.transport.asked.count("10.0.0.5:7070") == membership_module.ADMISSION_TRIES

    asyncio.run(scenario())


def test_without_tls_a_ghost_or_a_crowd_that_never_answers_is_never_known():
    async def scenario():
        m, refused = _member({"10.0.0.2:7070": _status("peer-02")})
        for i in range(50):
            m.add_peer(f"ghost-{i}", f"10.0.9.{i}:7070")
        m.add_peer("peer-02", "10.0.0.2:7070")
        await _settle(m)
        assert m.known == {"peer-02": "10.0.0.2:7070"} and refused == []

    asyncio.run(scenario())


def test_a_crowd_delays_a_real_peers_admission_but_cannot_keep_it_out(monkeypatch):
    monkeypatch.setattr(membership_module, "ADMISSION_RETRY_EVERY_S", 0.0)

    async def scenario():
        m, _ = _member({"10.0.0.2:7070": _status("peer-02")})
        for i in range(membership_module.MAX_PENDING_ADMISSIONS):
            m.add_peer(f"fake-{i}", f"10.1.0.{i}:1")
        m.add_peer("peer-02", "10.0.0.2:7070")  # no admission slot left: skipped for now
        assert ("peer-02", "10.0.0.2:7070") not in m.admissions
        await _settle(m)
        m.retry_admissions()  # the next round
        await _settle(m)
        assert m.known == {"peer-02": "10.0.0.2:7070"}

    asyncio.run(scenario())


def test_a_crowd_of_announcements_holds_a_bounded_number_of_admissions():
    async def scenario():
        m, _ = _member({}, tls=True)
        for i in range(1000):
            m.add_peer(f"fake-{i}", f"10.1.{i // 250}.{i % 250}:1")
        assert len(m.admissions) == membership_module.MAX_PENDING_ADMISSIONS
        m.close()
        await asyncio.gather(*m.admissions.values(), return_exceptions=True)

    asyncio.run(scenario())


def test_over_tls_a_static_address_is_known_only_under_the_id_its_certificate_names(monkeypatch):
    # a member of the run (certificate of peer-07) answering Status as peer-05 is not taken as peer-05
    async def scenario():
        answers = {"10.0.0.5:7070": _status("peer-05"), "10.0.0.6:7070": _status("peer-06")}
        m, refused = _member(answers, tls=True)
        m.transport.certificates = {"10.0.0.5:7070": "peer-07", "10.0.0.6:7070": "peer-06"}
        assert await m.add_static_peer("10.0.0.5:7070") and await m.add_static_peer("10.0.0.6:7070")
        assert m.known == {"peer-06": "10.0.0.6:7070"} and refused == ["identity"]

    asyncio.run(scenario())


def test_a_static_address_cannot_move_a_known_peer_without_proof():
    async def scenario():
        m, _ = _member({"10.0.0.2:7070": _status("peer-02"), "10.0.0.9:7070": _status("peer-02")})
        m.know("peer-02", "10.0.0.2:7070")
        m.transport.answers["10.0.0.2:7070"] = _status("peer-02")
        await m.add_static_peer("10.0.0.9:7070")  # answers as peer-02 too: goes through admission
        await _settle(m)
        assert m.known["peer-02"] in ("10.0.0.2:7070", "10.0.0.9:7070") and len(m.known) == 1

    asyncio.run(scenario())


def test_the_known_peers_are_bounded(monkeypatch):
    monkeypatch.setattr(membership_module, "MAX_KNOWN_PEERS", 2)
    m, refused = _member({})
    for i in range(4):
        m.know(f"peer-1{i}", f"10.0.1.{i}:7070")
    assert len(m.known) == 2 and refused == ["membership", "membership"]
    m.know("peer-10", "10.0.1.9:7070")  # a known one may still move (after its proof, by the caller)
    assert m.known["peer-10"] == "10.0.1.9:7070"
