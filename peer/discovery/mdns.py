"""mDNS/DNS-SD discovery with zeroconf: announce this peer, browse for the others of the same run.

Service type ``_tadlora._tcp.local.``; instance name ``<peer-id>-<run-hash>``; TXT records:
``peer_id``, ``run_id``, ``port``, ``proto`` (protocol version) and ``schema`` (hex digest of the
adapter's tensor schema). Peers of another run, another protocol version or another schema are
ignored (and logged once). Appearing and vanishing peers are reported through two callbacks.

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
from collections.abc import Callable
from dataclasses import dataclass

import ifaddr
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_tadlora._tcp.local."

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}   # listen on every interface: not an address to dial
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
    address: str          # host:port of its gRPC endpoint
    protocol_version: int
    schema: str


class MdnsDiscovery:
    def __init__(self, record: PeerRecord, on_found: Callable[[PeerRecord], None],
                 on_lost: Callable[[str], None], interfaces: list[str] | None = None) -> None:
        self.record, self.on_found, self.on_lost = record, on_found, on_lost
        self.interfaces = interfaces
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._names: dict[str, str] = {}   # service name -> peer id
        self._ignored: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def _instance(self) -> str:
        run_hash = hashlib.sha256(self.record.run_id.encode()).hexdigest()[:8]
        return f"{self.record.peer_id}-{run_hash}.{SERVICE_TYPE}"

    async def start(self) -> None:
        kwargs = {"ip_version": IPVersion.V4Only}
        if self.interfaces:
            kwargs["interfaces"] = self.interfaces
        self._zc = AsyncZeroconf(**kwargs)
        host, port = self.record.address.rsplit(":", 1)
        info = AsyncServiceInfo(
            SERVICE_TYPE, self._instance(), addresses=[socket.inet_aton(host)], port=int(port),
            properties={"peer_id": self.record.peer_id, "run_id": self.record.run_id, "port": port,
                        "proto": str(self.record.protocol_version), "schema": self.record.schema})
        await self._zc.async_register_service(info)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])

    def _on_change(self, zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if name == self._instance():
            return
        if state_change is ServiceStateChange.Removed:
            peer_id = self._names.pop(name, None)
            if peer_id:
                self.on_lost(peer_id)
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or "peer_id" not in props:
            return
        record = PeerRecord(props["peer_id"], props.get("run_id", ""), f"{addresses[0]}:{info.port}",
                            int(props.get("proto", "0") or 0), props.get("schema", ""))
        why = self._incompatible(record)
        if why:
            if name not in self._ignored:
                self._ignored.add(name)
                log.info("ignoring %s at %s: %s", record.peer_id, record.address, why)
            return
        self._names[name] = record.peer_id
        self.on_found(record)

    def _incompatible(self, other: PeerRecord) -> str:
        if other.run_id != self.record.run_id:
            return f"another run ({other.run_id!r})"
        if other.protocol_version != self.record.protocol_version:
            return f"protocol version {other.protocol_version}, ours {self.record.protocol_version}"
        if other.schema != self.record.schema:
            return "another adapter schema (model, rank or target modules differ)"
        return ""

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_unregister_all_services()
            await self._zc.async_close()
