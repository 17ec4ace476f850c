"""Multi-peer testbeds on one machine, and the faults to inject into them.

- ``runner``: N ``tadlora run`` daemons as local processes (``tadlora testbed``), or one per network
  namespace; scripted events applied as rounds pass; per-peer summaries.
- ``netns``: namespaces joined by a bridge, with link, bandwidth, loss, partition and delay faults.
- ``netdelay``: the delay-and-jitter process behind the delay fault (NFQUEUE; no ``tc netem`` here).
- ``scenario``: the TOML scenario format.

The docker-compose testbed lives in ``deploy/`` and uses ``collect`` from here to summarise.
"""

from peer.testbed.runner import NetnsTestbed, Testbed, collect, format_table, run_testbed, summarize_peers

__all__ = ["NetnsTestbed", "Testbed", "collect", "format_table", "run_testbed", "summarize_peers"]
