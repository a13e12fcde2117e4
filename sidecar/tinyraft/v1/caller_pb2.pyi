from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_LINEARIZABLE: _ClassVar[Consistency]
    CONSISTENCY_LEASE: _ClassVar[Consistency]
    CONSISTENCY_STALE: _ClassVar[Consistency]
CONSISTENCY_LINEARIZABLE: Consistency
CONSISTENCY_LEASE: Consistency
CONSISTENCY_STALE: Consistency

class Command(_message.Message):
    __slots__ = ("client_id", "sequence", "ack_below", "payload")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACK_BELOW_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    sequence: int
    ack_below: int
    payload: bytes
    def __init__(self, client_id: _Optional[int] = ..., sequence: _Optional[int] = ..., ack_below: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("commands", "client_id", "first_sequence", "ack_below", "payloads")
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACK_BELOW_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[Command]
    client_id: int
    first_sequence: int
    ack_below: int
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, commands: _Optional[_Iterable[_Union[Command, _Mapping]]] = ..., client_id: _Optional[int] = ..., first_sequence: _Optional[int] = ..., ack_below: _Optional[int] = ..., payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("result", "index", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    index: int
    error: str
    def __init__(self, result: _Optional[bytes] = ..., index: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("results", "packed_results", "errors")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CommandResult]
    packed_results: _containers.RepeatedScalarFieldContainer[bytes]
    errors: _containers.ScalarMap[int, str]
    def __init__(self, results: _Optional[_Iterable[_Union[CommandResult, _Mapping]]] = ..., packed_results: _Optional[_Iterable[bytes]] = ..., errors: _Optional[_Mapping[int, str]] = ...) -> None: ...

class ApplyStreamResponse(_message.Message):
    __slots__ = ("response", "code", "message", "leader")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    response: ApplyResponse
    code: int
    message: str
    leader: str
    def __init__(self, response: _Optional[_Union[ApplyResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., leader: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("request", "consistency")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    consistency: Consistency
    def __init__(self, request: _Optional[bytes] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("answer", "applied_index")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    answer: bytes
    applied_index: int
    def __init__(self, answer: _Optional[bytes] = ..., applied_index: _Optional[int] = ...) -> None: ...

class QueryBatchRequest(_message.Message):
    __slots__ = ("requests", "consistency", "packed")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedScalarFieldContainer[bytes]
    consistency: Consistency
    packed: bool
    def __init__(self, requests: _Optional[_Iterable[bytes]] = ..., consistency: _Optional[_Union[Consistency, str]] = ..., packed: _Optional[bool] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("answer", "error")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    answer: bytes
    error: str
    def __init__(self, answer: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class QueryBatchResponse(_message.Message):
    __slots__ = ("results", "applied_index", "answers", "errors")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    applied_index: int
    answers: _containers.RepeatedScalarFieldContainer[bytes]
    errors: _containers.ScalarMap[int, str]
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ..., applied_index: _Optional[int] = ..., answers: _Optional[_Iterable[bytes]] = ..., errors: _Optional[_Mapping[int, str]] = ...) -> None: ...

class QueryStreamResponse(_message.Message):
    __slots__ = ("response", "code", "message", "leader")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    response: QueryBatchResponse
    code: int
    message: str
    leader: str
    def __init__(self, response: _Optional[_Union[QueryBatchResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., leader: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("member_id", "cluster_id", "role", "term", "leader_id", "leader_address", "commit_index", "applied_index", "voters", "learners")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    cluster_id: str
    role: str
    term: int
    leader_id: str
    leader_address: str
    commit_index: int
    applied_index: int
    voters: _containers.RepeatedScalarFieldContainer[str]
    learners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, member_id: _Optional[str] = ..., cluster_id: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., voters: _Optional[_Iterable[str]] = ..., learners: _Optional[_Iterable[str]] = ...) -> None: ...
