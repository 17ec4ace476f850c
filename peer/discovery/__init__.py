"""Finding the other peers of a run: mDNS/DNS-SD announcements and browsing, plus static addresses."""

from peer.discovery.mdns import SERVICE_TYPE, MdnsDiscovery, PeerRecord

__all__ = ["SERVICE_TYPE", "MdnsDiscovery", "PeerRecord"]
