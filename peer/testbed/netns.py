"""Several hosts on one machine: Linux network namespaces joined by a bridge (needs root and ``ip``).

Layout for a lab with tag T and N peers::

    namespace T-br : bridge "br0" with one port per peer (T-b<i>)
    namespace T-p<i>: interface T-v<i> with address <subnet>.<10+i>/24, loopback up

SAFETY: the lab's subnet is only ever addressed from inside its namespaces. While the lab exists a
``blackhole`` route for the subnet sits in the root namespace, so that nothing in the root namespace
can send a packet towards it by mistake (its default route would carry it off the machine). ``down``
removes everything the lab created: its processes (by PID), its namespaces (and with them the veth
pairs and the bridge), and the route; it runs on normal exit, on exceptions, on Ctrl-C and SIGTERM
(through the caller's ``finally``) and is safe to call twice.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

from peer.errors import UsageError
from peer.testbed.processes import python_module, same_code_env

DEFAULT_SUBNET = "10.213.7"


def netns_available() -> str:
    """Empty when namespaces can be made here; otherwise the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing"
    probe = f"tdlprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class NetnsLab:
    peers: int
    subnet: str = DEFAULT_SUBNET
    tag: str = field(default_factory=lambda: f"tdl{uuid.uuid4().hex[:4]}")
    created: list[str] = field(default_factory=list)
    route: bool = False
    drops: dict[int, dict[int, int]] = field(default_factory=dict)  # receiver -> sender -> percent dropped
    delayers: dict[int, subprocess.Popen] = field(default_factory=dict)  # peer -> its netdelay process

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    def peer_ns(self, i: int) -> str:
        return f"{self.tag}-p{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def _port(self, i: int) -> str:
        return f"{self.tag}b{i}"

    def up(self) -> NetnsLab:
        try:
            _ip("route", "add", "blackhole", f"{self.subnet}.0/24")
            self.route = True
            self._namespace(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for i in range(self.peers):
                self._add_peer(i)
        except Exception:
            self.down()
            raise
        return self

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _add_peer(self, i: int) -> None:
        ns, inner, port = self.peer_ns(i), f"{self.tag}v{i}", self._port(i)
        self._namespace(ns)
        # create the pair directly inside the namespaces: it never exists in the root namespace
        _ip("-n", ns, "link", "add", inner, "type", "veth", "peer", "name", port, "netns", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")

    def wrap(self, i: int, command: list[str]) -> list[str]:
        """``command`` run inside peer i's namespace."""
        return ["ip", "netns", "exec", self.peer_ns(i), *command]

    def set_link(self, i: int, up: bool) -> None:
        """Unplug (or plug back) peer i's cable at the bridge."""
        _ip("-n", self.bridge_ns, "link", "set", self._port(i), "up" if up else "down")

    def limit_bandwidth(self, i: int, rate: str | None, burst: str = "32kbit") -> None:
        """Token-bucket limit on traffic towards peer i (``rate`` like "1mbit"); None removes it.
        ``burst``: the bucket; it must hold at least one timer tick of traffic (rate / HZ: about
        125 KB at 1 Gbit/s and HZ 1000), or the link runs well below ``rate``."""
        base = ["tc", "-n", self.bridge_ns, "qdisc"]
        if rate is None:
            subprocess.run([*base, "del", "dev", self._port(i), "root"], capture_output=True)
            return
        result = subprocess.run(
            [
                *base,
                "replace",
                "dev",
                self._port(i),
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                "400ms",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"tc tbf on {self._port(i)}: {result.stderr.strip()}")

    def set_drop(self, receiver: int, sender: int, percent: int) -> None:
        """Drop ``percent`` % of the packets from ``sender`` arriving at ``receiver`` (100: a one-way
        partition, 0: none). Applied with nftables inside the receiver's namespace."""
        if not 0 <= percent <= 100:
            raise ValueError(f"drop percentage must lie in [0, 100], got {percent}")
        if shutil.which("nft") is None:
            raise UsageError("packet loss and partitions need nftables ('nft'): apt-get install nftables")
        rules = self.drops.setdefault(receiver, {})
        if percent:
            rules[sender] = percent
        else:
            rules.pop(sender, None)
        lines = [
            f"ip saddr {self.address(s)} drop"
            if p == 100
            else f"ip saddr {self.address(s)} numgen random mod 100 < {p} drop"
            for s, p in sorted(rules.items())
        ]
        script = "\n".join(
            [
                "table inet tadlora {",
                "  chain input {",
                "    type filter hook input priority 0; policy accept;",
                *(f"    {line}" for line in lines),
                "  }",
                "}",
                "",
            ]
        )
        ns = self.peer_ns(receiver)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "tadlora"], capture_output=True)
        result = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {result.stderr.strip()}")

    def set_delay(self, i: int, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Hold every packet peer i sends to the lab for delay ± jitter ms (0: no delay), by an iptables
        NFQUEUE rule in its namespace and a ``peer.testbed.netdelay`` process there (see that module)."""
        if not 0 <= jitter_ms <= delay_ms:
            raise ValueError(f"need 0 <= jitter <= delay, got delay {delay_ms} ms, jitter {jitter_ms} ms")
        self._stop_delayer(i)
        if delay_ms == 0:
            return
        if shutil.which("iptables") is None:
            raise RuntimeError(
                "delay needs iptables (its NFQUEUE target; nft's queue is often not built): apt-get install iptables"
            )
        if importlib.util.find_spec("netfilterqueue") is None:
            raise RuntimeError(
                "delay needs the netfilterqueue package: apt-get install libnetfilter-queue-dev, "
                "then pip install netfilterqueue"
            )
        proc = subprocess.Popen(
            self.wrap(
                i,
                [
                    *python_module("peer.testbed.netdelay"),
                    "--queue",
                    "0",
                    "--delay-ms",
                    str(delay_ms),
                    "--jitter-ms",
                    str(jitter_ms),
                    "--seed",
                    str(i),
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=same_code_env(),
        )
        self.delayers[i] = proc
        assert proc.stdout is not None and proc.stderr is not None  # both PIPE
        if proc.stdout.readline().strip() != "ready":
            self._stop_delayer(i)
            raise RuntimeError(f"netdelay in {self.peer_ns(i)} did not start: {proc.stderr.read().strip()}")
        result = subprocess.run(self.wrap(i, ["iptables", "-A", *self._delay_rule()]), capture_output=True, text=True)
        if result.returncode != 0:
            self._stop_delayer(i)
            raise RuntimeError(f"iptables in {self.peer_ns(i)}: {result.stderr.strip()}")

    def _delay_rule(self) -> list[str]:
        # only unicast to the lab's subnet: the gossip streams (mDNS multicast passes undelayed);
        # --queue-bypass lets packets through should the delay process ever be gone
        return ["OUTPUT", "-d", f"{self.subnet}.0/24", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]

    def _stop_delayer(self, i: int) -> None:
        proc = self.delayers.pop(i, None)
        if proc is None:
            return
        subprocess.run(self.wrap(i, ["iptables", "-D", *self._delay_rule()]), capture_output=True)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def down(self) -> None:
        for i in list(self.delayers):
            self._stop_delayer(i)
        for name in reversed(self.created):
            _ip("netns", "del", name, check=False)
        self.created.clear()
        self.drops.clear()
        if self.route:
            _ip("route", "del", "blackhole", f"{self.subnet}.0/24", check=False)
            self.route = False
