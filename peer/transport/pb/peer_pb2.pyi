from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("protocol_version", "run_id", "sender_id", "round", "phase", "factors", "schema_digest", "payload_digest", "payload_size", "degree", "link_estimate", "switch_interval", "schedule_round", "proposed_interval", "phase_start", "lane_token", "lane_port")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    LINK_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    SWITCH_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ROUND_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PHASE_START_FIELD_NUMBER: _ClassVar[int]
    LANE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LANE_PORT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    run_id: str
    sender_id: str
    round: int
    phase: str
    factors: _containers.RepeatedScalarFieldContainer[str]
    schema_digest: bytes
    payload_digest: bytes
    payload_size: int
    degree: int
    link_estimate: float
    switch_interval: int
    schedule_round: int
    proposed_interval: int
    phase_start: int
    lane_token: bytes
    lane_port: int
    def __init__(self, protocol_version: _Optional[int] = ..., run_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., round: _Optional[int] = ..., phase: _Optional[str] = ..., factors: _Optional[_Iterable[str]] = ..., schema_digest: _Optional[bytes] = ..., payload_digest: _Optional[bytes] = ..., payload_size: _Optional[int] = ..., degree: _Optional[int] = ..., link_estimate: _Optional[float] = ..., switch_interval: _Optional[int] = ..., schedule_round: _Optional[int] = ..., proposed_interval: _Optional[int] = ..., phase_start: _Optional[int] = ..., lane_token: _Optional[bytes] = ..., lane_port: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    def __init__(self, round: _Optional[int] = ...) -> None: ...

class CommitAck(_message.Message):
    __slots__ = ("round", "lane_kept")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LANE_KEPT_FIELD_NUMBER: _ClassVar[int]
    round: int
    lane_kept: bool
    def __init__(self, round: _Optional[int] = ..., lane_kept: _Optional[bool] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("reason", "detail", "current_round")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    reason: str
    detail: str
    current_round: int
    def __init__(self, reason: _Optional[str] = ..., detail: _Optional[str] = ..., current_round: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("header", "chunk", "commit", "ack", "reject")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    header: Header
    chunk: Chunk
    commit: Commit
    ack: CommitAck
    reject: Reject
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., ack: _Optional[_Union[CommitAck, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Neighbour(_message.Message):
    __slots__ = ("peer_id", "address", "last_round", "last_exchange_unix")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    LAST_EXCHANGE_UNIX_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    address: str
    last_round: int
    last_exchange_unix: float
    def __init__(self, peer_id: _Optional[str] = ..., address: _Optional[str] = ..., last_round: _Optional[int] = ..., last_exchange_unix: _Optional[float] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("protocol_version", "peer_id", "run_id", "round", "phase", "neighbours", "schema_digest", "switch_interval", "rejected", "phase_start", "schedule_round")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SWITCH_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    PHASE_START_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ROUND_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    peer_id: str
    run_id: str
    round: int
    phase: str
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbour]
    schema_digest: bytes
    switch_interval: int
    rejected: _containers.ScalarMap[str, int]
    phase_start: int
    schedule_round: int
    def __init__(self, protocol_version: _Optional[int] = ..., peer_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., phase: _Optional[str] = ..., neighbours: _Optional[_Iterable[_Union[Neighbour, _Mapping]]] = ..., schema_digest: _Optional[bytes] = ..., switch_interval: _Optional[int] = ..., rejected: _Optional[_Mapping[str, int]] = ..., phase_start: _Optional[int] = ..., schedule_round: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("run_id", "peer_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    peer_id: str
    def __init__(self, run_id: _Optional[str] = ..., peer_id: _Optional[str] = ...) -> None: ...

class OutcomeRequest(_message.Message):
    __slots__ = ("run_id", "peer_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    peer_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class OutcomeReply(_message.Message):
    __slots__ = ("counted", "known")
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    counted: bool
    known: bool
    def __init__(self, counted: _Optional[bool] = ..., known: _Optional[bool] = ...) -> None: ...
