"""``tadlora status ADDRESS``: one daemon's view of the run, and each peer it knows, read over Status RPCs.

The asked daemon reports its round, phase, switching interval, refusals by reason, and for each
neighbour it knows: address, the last round a link with it counted and when. Each of those
neighbours is then asked for its own round and phase (a neighbour that does not answer shows as
unreachable). Over TLS the command needs a certificate of the run like any peer.
"""

from __future__ import annotations

import time
from pathlib import Path

from peer.errors import UsageError
from peer.transport.base import ExchangeFailed, StatusInfo
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.tls import TlsMaterial, load, run_of


def _tls(ca: str, cert: str, key: str) -> TlsMaterial | None:
    """The operator's certificate (any of the run's: ``tadlora certs --peer-id ops``)."""
    if not ca:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    own = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    name = str(own.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    return load(ca, cert, key, name, run_of(x509.load_pem_x509_certificate(Path(ca).read_bytes())))


def _view(status: StatusInfo) -> dict:
    return {
        "peer_id": status.peer_id,
        "run_id": status.run_id,
        "round": status.round,
        "phase": status.phase,
        "switch_interval": status.switch_interval,
        "rejected": dict(status.rejected),
        "known": len(status.neighbours),
    }


async def gather_status(
    address: str, timeout: float = 3.0, tls_ca: str = "", tls_cert: str = "", tls_key: str = ""
) -> dict:
    transport = GrpcTransport(tls=_tls(tls_ca, tls_cert, tls_key))
    try:
        try:
            own = await transport.status(address, timeout)
        except ExchangeFailed as exc:
            raise UsageError(f"no answer from {address}: {exc}") from None
        report = {"address": address, **_view(own), "peers": []}
        now = time.time()
        for n in own.neighbours:
            entry = {
                "peer_id": n.peer_id,
                "address": n.address,
                "last_round": n.last_round,
                "seconds_since_exchange": round(now - n.last_exchange_unix, 1) if n.last_round >= 0 else None,
            }
            try:
                entry.update(
                    {
                        k: v
                        for k, v in _view(await transport.status(n.address, timeout)).items()
                        if k in ("round", "phase", "known")
                    }
                )
            except ExchangeFailed:
                entry["unreachable"] = True
            report["peers"].append(entry)
        return report
    finally:
        await transport.close()


def format_status(report: dict) -> str:
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(report["rejected"].items())) or "none"
    lines = [
        f"{report['peer_id']} at {report['address']}  run {report['run_id']}  round {report['round']}  "
        f"phase {report['phase']}  T={report['switch_interval']}  refused: {rejected}",
        f"{'peer':<12} {'address':<22} {'round':>6} {'phase':>6} {'knows':>6} {'last link':>10} {'ago':>9}",
    ]
    for p in report["peers"]:
        if p.get("unreachable"):
            state = f"{'-':>6} {'-':>6} {'-':>6}"
        else:
            state = f"{p['round']:>6} {p['phase']:>6} {p['known']:>6}"
        last = p["last_round"] if p["last_round"] >= 0 else "never"
        ago = f"{p['seconds_since_exchange']:.1f} s" if p["seconds_since_exchange"] is not None else "-"
        lines.append(
            f"{p['peer_id']:<12} {p['address']:<22} {state} {last!s:>10} {ago:>9}"
            + ("  unreachable" if p.get("unreachable") else "")
        )
    return "\n".join(lines)
