"""The networked peer daemon (``tadlora run``): one peer per process, factors over gRPC, peers by mDNS.

Modules, from the bottom up: ``rounds`` (the state of one round and its final link decisions),
``persistence`` and ``checkpoint`` (what is written, in which order, atomically), ``protocol`` (the
link protocol, client and server side), ``membership`` (who may link), ``links`` (which links a round
attempts, backoff), ``clock`` (adaptive round deadlines), ``node`` (the round loop that uses them),
``signals`` and ``main`` (the process: signals, uvloop), ``observe`` and ``status`` (metrics, status).
"""
