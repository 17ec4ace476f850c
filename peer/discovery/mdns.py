"""mDNS/DNS-SD discovery with zeroconf: announce this peer, browse for the others of the same run.

Service type ``_tadlora._tcp.local.``; instance name ``<peer-id>-<run-hash>``; TXT records:
``peer_id``, ``run_id``, ``port``, ``proto`` (protocol version) and ``schema`` (hex digest of the
adapter's tensor schema). Peers of another run, another protocol version or another schema are
ignored, and so are records that do not parse (TXT values that are not UTF-8, a protocol version that
is not a number, a peer id outside ``peer.transport.ids``'s alphabet): each is refused with one
``Refusal`` (a fixed vocabulary, so a hostile record cannot invent labels), counted through
``on_refused`` and logged once per service name. Appearing and vanishing peers are reported through
two callbacks. Another daemon that already announces this peer id for this run makes ``start``
raise ``DuplicatePeerId``.

``interfaces``: the addresses to announce and listen on. ``127.0.0.1`` keeps everything on the
machine (tests); a LAN address (or ``None`` for all interfaces) for real deployments.

``announced_address``: what a daemon that listens on every interface (``0.0.0.0``) tells its peers,
a real address of this machine (``own_address``), never the wildcard nobody can dial.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import ifaddr
from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from peer.errors import UsageError
from peer.transport.ids import peer_id_problem

log = logging.getLogger("tadlora.discovery")

SERVICE_TYPE = "_tadlora._tcp.local."
RESOLVE_TIMEOUT_MS = 3000
# How long ``start`` browses before announcing, to learn whether another daemon already has this peer
# id in this run. python-zeroconf's browser hears an existing service about 1.1-1.25 s after it starts
# (measured on loopback: its first query waits, and a responder multicasts a record at most once a
# second, RFC 6762 §6.2); raise it on a network where a duplicate id is not caught (the symptom: two
# peers with one id, their links flapping). The daemon counts this window into --discovery-wait.
DUPLICATE_WINDOW_S = 1.5
# Service names whose refusal was logged: remembered so that each is logged once, forgotten oldest
# first beyond this many, so that a flood of fake names cannot grow memory.
MAX_REMEMBERED_REFUSALS = 1024
# Announcements of this run remembered (to pass on their goodbyes); beyond it the oldest is forgotten,
# so a crowd of fake services cannot grow memory (a forgotten real peer's goodbye is then missed, and
# the link back-off retires it instead).
MAX_ANNOUNCED_NAMES = 1024


class Refusal(StrEnum):
    """Why a discovered record was not taken as a peer (the counter labels ``mdns-<value>``)."""

    NOT_UTF8 = "not-utf8"
    BAD_RECORD = "bad-record"  # no address, no peer id, a protocol version that is not a number
    BAD_PEER_ID = "bad-peer-id"
    OTHER_RUN = "other-run"
    OTHER_PROTOCOL = "other-protocol"
    OTHER_SCHEMA = "other-schema"


class DuplicatePeerId(UsageError, RuntimeError):
    """Another daemon already announces this peer id for this run on the network, at ``address``."""

    def __init__(self, message: str, address: str = "") -> None:
        super().__init__(message)
        self.address = address


WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}  # listen on every interface: not an address to dial
LOOPBACK = "127.0.0.1"
# Only the route towards this address is looked up (connect() on a UDP socket sends nothing): the
# interface it leaves by is the machine's main one. TEST-NET-1 (RFC 5737), never a real host.
ROUTE_PROBE = ("192.0.2.1", 9)


def announced_address(bound: str, interface: str = "") -> str:
    """The host:port peers dial for an endpoint bound to ``bound`` (host:port): ``bound`` itself when it
    names a host; for a wildcard host, ``interface`` (the --mdns-interface) if given, else ``own_address()``."""
    host, port = bound.rsplit(":", 1)
    if host not in WILDCARD_HOSTS:
        return bound
    return f"{interface or own_address()}:{port}"


def own_address() -> str:
    """This machine's IPv4 address for other machines: one of its interfaces' addresses (enumerated,
    not resolved from its name, which often maps to 127.0.1.1), loopback and link-local excluded; of
    several, the one its route to the outside leaves by. Loopback only when there is nothing else."""
    candidates = [a for a in interface_addresses() if _reachable_from_outside(a)]
    if not candidates:
        log.warning("no network interface with an IPv4 address besides loopback: announcing %s", LOOPBACK)
        return LOOPBACK
    routed = _routed_address()
    return routed if routed in candidates else candidates[0]


def interface_addresses() -> list[str]:
    """Every IPv4 address of this machine's interfaces, in the interfaces' order."""
    return [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)]


def _reachable_from_outside(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return not (parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified)


def _routed_address() -> str | None:
    """The source address of the route towards ROUTE_PROBE; None without such a route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(ROUTE_PROBE)
        except OSError:
            return None
        return probe.getsockname()[0]


@dataclass(frozen=True)
class PeerRecord:
    peer_id: str
    run_id: str
    address: str  # host:port of its gRPC endpoint
    protocol_version: int
    schema: str


def parse_record(
    properties: Mapping[bytes, bytes | None], addresses: list[str], port: int | None
) -> PeerRecord | tuple[Refusal, str]:
    """A record from an announcement's TXT properties, or why it is refused (with an escaped detail)."""
    try:
        props = {k.decode("utf-8"): (v or b"").decode("utf-8") for k, v in properties.items()}
    except UnicodeDecodeError:
        return Refusal.NOT_UTF8, "a TXT key or value is not UTF-8"
    peer_id, proto = props.get("peer_id", ""), props.get("proto", "0") or "0"
    if not addresses or not port:
        return Refusal.BAD_RECORD, "no IPv4 address or port"
    if why := peer_id_problem(peer_id):
        return Refusal.BAD_PEER_ID, f"peer id {why}"
    if not proto.isdigit() or len(proto) > 9:
        return Refusal.BAD_RECORD, f"protocol version {proto[:16]!r} is not a number"
    return PeerRecord(peer_id, props.get("run_id", ""), f"{addresses[0]}:{port}", int(proto), props.get("schema", ""))


class MdnsDiscovery:
    def __init__(
        self,
        record: PeerRecord,
        on_found: Callable[[PeerRecord], None],
        on_lost: Callable[[str, str], None],
        interfaces: list[str] | None = None,
        on_refused: Callable[[Refusal, str, str], None] | None = None,
    ) -> None:
        """``on_lost(peer id, address)``: the announcement of that peer at that address was withdrawn
        (another announcement of the same id elsewhere is not touched). ``on_refused(reason, detail,
        service name)`` is called for each refused record (once per name and reason; the name and detail
        are escaped and bounded)."""
        self.record, self.on_found, self.on_lost = record, on_found, on_lost
        self.on_refused = on_refused
        self.interfaces = interfaces
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._names: OrderedDict[str, tuple[str, str]] = OrderedDict()  # service name -> (peer id, address)
        self._refused: OrderedDict[tuple[str, Refusal], None] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._own_name_seen = False  # before announcing: someone else answers for this peer id

    @property
    def _running(self) -> AsyncZeroconf:
        if self._zc is None:
            raise RuntimeError("mDNS discovery is not started")
        return self._zc

    def _instance(self) -> str:
        run_hash = hashlib.sha256(self.record.run_id.encode()).hexdigest()[:8]
        return f"{self.record.peer_id}-{run_hash}.{SERVICE_TYPE}"

    async def start(self, check_duplicate: bool = True) -> None:
        """Browse, then announce this peer. ``check_duplicate``: first make sure no other daemon announces
        this peer id in this run (``DuplicatePeerId``; the caller may verify the address it names and
        start again without the check if that address does not answer for the id: a fake)."""
        if self.interfaces:
            self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only, interfaces=self.interfaces)
        else:
            self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        host, port = self.record.address.rsplit(":", 1)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            self._instance(),
            addresses=[socket.inet_aton(host)],
            port=int(port),
            properties={
                "peer_id": self.record.peer_id,
                "run_id": self.record.run_id,
                "port": port,
                "proto": str(self.record.protocol_version),
                "schema": self.record.schema,
            },
        )
        # browse first: the answers to the browser's query tell whether another daemon already has
        # this instance name (this peer id in this run) before we announce it
        self._browser = AsyncServiceBrowser(self._running.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])
        try:
            if check_duplicate:
                await asyncio.sleep(DUPLICATE_WINDOW_S)
            elsewhere = await self._answered_elsewhere() if check_duplicate and self._own_name_seen else None
            if elsewhere is not None:
                raise NonUniqueNameException(elsewhere)
            # without the check (a fake holds our name): zeroconf would refuse the taken name; let it pick
            # another instance name (peers read the peer id from the TXT record, not from the name)
            await self._running.async_register_service(info, allow_name_change=not check_duplicate)
        except NonUniqueNameException as exc:
            await self.close()
            where = f" (at {exc.args[0]})" if exc.args else ""
            raise DuplicatePeerId(
                f"peer-id: another daemon already announces {self.record.peer_id!r} for run "
                f"{self.record.run_id!r} on this network{where}; give each daemon its own "
                "--peer-id",
                exc.args[0] if exc.args else "",
            ) from None

    async def _answered_elsewhere(self) -> str | None:
        """The address of the other daemon that announced this peer id and run (from the browser's
        answers, in the cache), unless it is this daemon's own address."""
        info = AsyncServiceInfo(SERVICE_TYPE, self._instance())
        if not await info.async_request(self._running.zeroconf, RESOLVE_TIMEOUT_MS):
            return None
        addresses = info.parsed_addresses(IPVersion.V4Only)
        there = f"{addresses[0]}:{info.port}" if addresses else "an unknown address"
        return None if there == self.record.address else there

    def _on_change(self, zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if name == self._instance():
            self._own_name_seen = self._own_name_seen or state_change is not ServiceStateChange.Removed
            return
        if state_change is ServiceStateChange.Removed:
            announced = self._names.pop(name, None)
            if announced:
                self.on_lost(*announced)
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._running.zeroconf, RESOLVE_TIMEOUT_MS):
                return
            parsed = parse_record(info.properties, info.parsed_addresses(IPVersion.V4Only), info.port)
        except Exception as exc:
            self._refuse(name, Refusal.BAD_RECORD, f"unreadable service name ({type(exc).__name__})")
            return
        if isinstance(parsed, tuple):
            self._refuse(name, *parsed)
            return
        refusal = self._incompatible(parsed)
        if refusal is not None:
            self._refuse(name, *refusal)
            return
        self._names[name] = (parsed.peer_id, parsed.address)
        self._names.move_to_end(name)
        if len(self._names) > MAX_ANNOUNCED_NAMES:
            self._names.popitem(last=False)
        self.on_found(parsed)

    def _refuse(self, name: str, reason: Refusal, detail: str) -> None:
        key = (name, reason)
        if key in self._refused:
            return
        self._refused[key] = None
        if len(self._refused) > MAX_REMEMBERED_REFUSALS:
            self._refused.popitem(last=False)
        shown = ascii(name[:80])
        log.info("ignoring the mDNS record %s: %s (%s)", shown, reason.value, detail)
        if self.on_refused is not None:
            self.on_refused(reason, detail, shown)

    def _incompatible(self, other: PeerRecord) -> tuple[Refusal, str] | None:
        if other.run_id != self.record.run_id:
            return Refusal.OTHER_RUN, f"another run ({other.run_id[:40]!r})"
        if other.protocol_version != self.record.protocol_version:
            return (
                Refusal.OTHER_PROTOCOL,
                f"protocol version {other.protocol_version}, ours {self.record.protocol_version}",
            )
        if other.schema != self.record.schema:
            return Refusal.OTHER_SCHEMA, "another adapter schema (model, rank or target modules differ)"
        return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        browser, self._browser = self._browser, None
        zc, self._zc = self._zc, None
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            await zc.async_unregister_all_services()
            await zc.async_close()
