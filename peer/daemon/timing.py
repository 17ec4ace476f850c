"""Every fixed time of the daemon, in one place: what it bounds, how to choose it, and the symptom that
says it is too small (or too large). The times a user sets per run (``--round-timeout-min/max``,
``--frame-timeout``, ``--discovery-wait``) are settings in ``peer.config``; ``peer.daemon.clock``
explains the round deadline. These are the ones a user should not need to touch: they are sized for a
LAN, where a peer that is up answers a Status call in milliseconds.
"""

# ---------------------------------------------------------------- asking a neighbour (Status calls)

STATUS_TIMEOUT_S = 2.0
"""How long a Status call to a known neighbour may take (probing a dormant peer, confirming a round
before a jump, asking whether the neighbours are done). A peer that is up answers in milliseconds;
2 s covers a loaded machine. Too small: busy peers look dead (probes fail, jumps are not confirmed,
``could not confirm`` lines in the log); too large: a hung peer delays the end of a run by this much
per neighbour."""

FETCH_TIMEOUT_S = 10.0
"""How long fetching a neighbour's latest factors may take (a late joiner, a jump). It carries a whole
adapter: size it for your adapter at your link rate with room to spare. Too small: ``could not fetch
the schedule of`` warnings and a joiner that keeps its own phase."""

# ---------------------------------------------------------------- one link, inside a round

LAGGING_NEIGHBOUR_ALLOWANCE = 3.0
"""× ``--round-timeout-min``: how long a swap this peer opens waits for a neighbour one round behind.
Too small: links with a slower neighbour are refused as ``round-ahead`` and the two drift apart; too
large: a hung neighbour costs this much every time it is attempted (back-off limits how often)."""

OUTCOME_RETRY_S = 0.2
"""Between two outcome queries (how did my link of round r end?) to a server whose ack was lost. Too
large: a round whose ack was lost waits longer for its answer; too small: more queries to a server
that is down."""

OUTCOME_QUERY_TIMEOUT_S = 1.0
"""How long one outcome query waits; a server that is up answers at once. Too small on a slow network:
links are left unresolved (settled later) although the server answered."""

AHEAD_RETRY_S = 0.2
"""Pause before retrying a swap that a server one round behind refused (``round-ahead``): it opens
our round soon. Retrying until the deadline is what keeps peers in step. Too large: such links miss
the deadline (``round-ahead`` refusals in the counters of in-step peers)."""

WATCH_INTERVAL_S = 0.5
"""How often a server-side link asks whether its opener (the lower id) is still coming. Too large:
a round waits this much longer for an opener that is gone."""

WATCH_STATUS_TIMEOUT_S = 1.0
"""How long that question may take. Too small on a loaded machine: an opener that is coming is taken
for gone and the link is refused at this end."""

WATCH_UNREACHABLE_TRIES = 2
"""Unanswered questions in a row before the opener counts as gone. Too small: one lost packet ends a
link that would have counted."""

# ---------------------------------------------------------------- switch-interval auto (rounds, not seconds)

LINK_WINDOW_ROUNDS = 20
"""Rounds over which a peer measures its link rate (the fraction of possible links that counted), from
which it proposes T. Too small: T jumps with every lucky or unlucky round; too large: T follows a
change of the network late."""

SCHEDULE_WINDOW_ROUNDS = 10
"""Rounds between two decisions of T (``AgreedSchedule``'s ``gossip_rounds``): proposals spread in the
first half, freeze in the second. Too small for the network's diameter: peers decide different T
(``phase`` refusals in the counters until they reconcile)."""

# ---------------------------------------------------------------- membership

ADMISSION_TRIES = 5
"""Status calls to an announced address before it is left for the next retry round
(``ADMISSION_RETRY_EVERY_S``). With the two below: an address that answers within
5 × (3 + 1) s is admitted at once. Too small: a slow-starting peer waits for the next retry round."""

ADMISSION_STATUS_TIMEOUT_S = 3.0
"""How long one of them may take (a peer still loading its model answers late). Too small: peers
busy at start-up are admitted late (``not taking ... it never answered`` in the log)."""

ADMISSION_RETRY_S = 1.0
"""Between two of them."""

ADMISSION_RETRY_EVERY_S = 10.0
"""How often an announced peer that was not admitted is tried again (least recently tried first).
Too large: a peer that started late is admitted late; too small: a crowd of fake announcements costs
more Status calls."""

STATIC_STATUS_TIMEOUT_S = 2.0
"""How long a Status call to a ``--peer`` address may take. Too small: a busy static peer is asked
again every ``STATIC_PEER_RETRY_S`` until it answers in time."""

STATIC_PEER_RETRY_S = 1.0
"""How often a ``--peer`` address that did not answer yet is asked again (peers may start later)."""

GOODBYE_CHECK_TIMEOUT_S = 2.0
"""How long a peer whose mDNS record was withdrawn may take to show it is still there (a goodbye can
be forged: the peer is removed only once its address stops answering for it)."""

PEER_WAIT_POLL_S = 0.1
"""How often the daemon looks whether the expected peers are known, before the first round (the
first round starts at most this late after the last of them is found)."""

LINGER_POLL_S = 0.25
"""How often a peer that finished its rounds asks whether its neighbours have finished too (it keeps
answering their last outcome queries meanwhile). Too large: a finished run exits this much later."""

SETTLE_POLL_FRACTION = 0.25
"""× ``--round-timeout-min``: how often the end of a run asks again for the outcome of links still
unresolved."""

# ---------------------------------------------------------------- stopping

STOP_GRACE_S = 5.0
"""From a stop signal (SIGINT, SIGTERM) to the end of the process, at most. Too small on a slow disk:
the last checkpoint write is cut (it is atomic: the previous one stays)."""

SHUTDOWN_GRACE_S = 20.0
"""How long the clean-up at the end of a run (closing mDNS, the transport, the workers) may take
before the process exits anyway. A hang there is a bug; this bounds its cost."""
