"""Mutual TLS: certificates that belong together, refused strangers and impostors, and daemons of one
run that train together over it."""

import asyncio

import pytest

from peer.transport.base import ExchangeFailed, Header, Rejected
from peer.transport.codec import encode_factors
from peer.transport.framing import Limits, seal
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.tls import TlsError, load, make_run


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    make_run(root / "run", "run-1", ["peer-a", "peer-b", "peer-c"])
    make_run(root / "other", "run-1", ["peer-a"])  # same run id, another authority: a stranger
    make_run(root / "run2", "run-2", ["peer-a"])
    return root


def material(folder, peer_id, run_id="run-1"):
    return load(folder / "ca.pem", folder / f"{peer_id}.pem", folder / f"{peer_id}.key", peer_id, run_id)


def test_load_checks_that_the_files_belong_together(certs):
    assert material(certs / "run", "peer-a").peer_id == "peer-a"
    run = certs / "run"
    with pytest.raises(TlsError, match="not signed by the authority"):
        load(certs / "other" / "ca.pem", run / "peer-a.pem", run / "peer-a.key", "peer-a", "run-1")
    with pytest.raises(TlsError, match="is not the key of"):
        load(run / "ca.pem", run / "peer-a.pem", run / "peer-b.key", "peer-a", "run-1")
    with pytest.raises(TlsError, match="issued to 'peer-a'"):
        load(run / "ca.pem", run / "peer-a.pem", run / "peer-a.key", "peer-b", "run-1")
    with pytest.raises(TlsError, match="belongs to run 'run-1'"):
        load(run / "ca.pem", run / "peer-a.pem", run / "peer-a.key", "peer-a", "run-9")
    with pytest.raises(TlsError, match="No such file"):
        load(run / "ca.pem", run / "peer-z.pem", run / "peer-z.key", "peer-z", "run-1")
    with pytest.raises(TlsError, match="holds the authority of run"):
        make_run(run, "run-2", ["peer-c"])
    with pytest.raises(TlsError, match="letters, digits"):
        make_run(run, "run-1", ["../escape"])
    assert (run / "peer-a.key").stat().st_mode & 0o077 == 0  # private keys are not readable by others


class Recorder:
    """Just enough of a peer to see what reaches it."""

    def __init__(self):
        self.rejections, self.responded = [], 0

    async def screen(self, header):
        pass

    async def respond(self, incoming):
        self.responded += 1
        return incoming

    async def commit(self, header):
        return True

    async def abort(self, header):
        pass

    def count_rejection(self, reason, detail="", source=""):
        self.rejections.append(reason)


def _message(sender):
    return seal(Header("run-1", sender, 0, "A", ("A",), b"\0" * 32), encode_factors({}))


async def _accept(_):
    return None


def test_strangers_cannot_connect_and_members_cannot_speak_for_others(certs):
    async def scenario():
        server = GrpcTransport(Limits(), material(certs / "run", "peer-b"))
        peer = Recorder()
        address = await server.serve(peer, "127.0.0.1:0")
        clients = {
            "stranger": GrpcTransport(Limits(), material(certs / "other", "peer-a")),
            "other run": GrpcTransport(Limits(), material(certs / "run2", "peer-a", "run-2")),
            "no certificate": GrpcTransport(Limits()),
            "member": GrpcTransport(Limits(), material(certs / "run", "peer-a")),
        }
        try:
            for name in ("stranger", "other run", "no certificate"):
                with pytest.raises(ExchangeFailed):  # HandshakeRefused, or a plaintext call the TLS port drops
                    await clients[name].exchange(address, _message("peer-a"), _accept, timeout=5)
            assert peer.responded == 0 and peer.rejections == []  # refused in the handshake, before any byte
            with pytest.raises(Rejected) as impostor:
                await clients["member"].exchange(address, _message("peer-b"), _accept, timeout=5)
            assert impostor.value.reason == "identity" and peer.rejections == ["identity"]
            reply = await clients["member"].exchange(address, _message("peer-a"), _accept, timeout=5)
            assert reply.header.sender_id == "peer-a" and peer.responded == 1
        finally:
            for client in clients.values():
                await client.close()
            await server.close()

    asyncio.run(scenario())


def test_a_member_cannot_answer_for_another_member(certs):
    # issue 12: dialled as peer-b, the server must hold peer-b's certificate; peer-c's (a member of the
    # run too) fails the handshake, so peer-c cannot claim peer-b's id at its own address
    from peer.transport.base import HandshakeRefused

    async def scenario():
        server = GrpcTransport(Limits(), material(certs / "run", "peer-c"))
        address = await server.serve(Recorder(), "127.0.0.1:0")
        client = GrpcTransport(Limits(), material(certs / "run", "peer-a"))
        try:
            with pytest.raises(HandshakeRefused):
                await client.exchange(address, _message("peer-a"), _accept, timeout=5, expect="peer-b")
            reply = await client.exchange(address, _message("peer-a"), _accept, timeout=5, expect="peer-c")
            assert reply.header.sender_id == "peer-a"
        finally:
            await client.close()
            await server.close()

    asyncio.run(scenario())
