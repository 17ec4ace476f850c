"""The networked peer daemon (``tadlora run``): one peer per process, factors over gRPC, peers by mDNS.

Modules: ``links`` (which links a round attempts), ``clock`` (adaptive round deadlines),
``checkpoint`` (atomic save and resume), ``node`` (the daemon: round loop and exchange server),
``main`` (process entry: uvloop, signals).
"""
