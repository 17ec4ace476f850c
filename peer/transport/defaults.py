"""The transport's default sizes and times, in a module with no imports: the transport's ``Limits``
and the daemon's settings (``peer.config``, read before anything slow is imported) share them."""

# Bytes per chunk sent. 1 MiB moves well over loopback and LANs; much smaller chunks cost per-frame
# overhead, much larger ones raise memory peaks.
DEFAULT_CHUNK_SIZE = 1 << 20
# One gRPC message carries one chunk; gRPC's message caps are 32-bit, and chunks this large already
# cost more memory than they save in per-frame overhead.
MAX_CHUNK_SIZE = 64 << 20
# Seconds to wait for the next frame of a stream. Too small shows as ``stalled`` refusals between
# healthy peers on a slow link; too large keeps a stalled stream (a crashed or hostile peer) that long.
DEFAULT_FRAME_TIMEOUT_S = 10.0
# Payloads of at least this many bytes go on the payload lane (``peer.transport.lane``) when the
# server has one: above it gRPC's copies cost more than the lane's connection and threads. Below,
# a swap is dominated by its round trips, which the lane does not shorten.
DEFAULT_LANE_MIN_BYTES = 4 << 20
