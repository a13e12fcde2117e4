from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModuleEntry(_message.Message):
    __slots__ = ("index", "command")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    index: int
    command: bytes
    def __init__(self, index: _Optional[int] = ..., command: _Optional[bytes] = ...) -> None: ...

class ApplyBatchRequest(_message.Message):
    __slots__ = ("after_index", "entries", "last_index", "commands", "indexes")
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    after_index: int
    entries: _containers.RepeatedCompositeFieldContainer[ModuleEntry]
    last_index: int
    commands: _containers.RepeatedScalarFieldContainer[bytes]
    indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, after_index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[ModuleEntry, _Mapping]]] = ..., last_index: _Optional[int] = ..., commands: _Optional[_Iterable[bytes]] = ..., indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class ApplyResult(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: bytes
    def __init__(self, result: _Optional[bytes] = ...) -> None: ...

class ApplyBatchResponse(_message.Message):
    __slots__ = ("results", "packed_results")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ApplyResult]
    packed_results: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, results: _Optional[_Iterable[_Union[ApplyResult, _Mapping]]] = ..., packed_results: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ModuleQueryRequest(_message.Message):
    __slots__ = ("request", "min_index")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    MIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    min_index: int
    def __init__(self, request: _Optional[bytes] = ..., min_index: _Optional[int] = ...) -> None: ...

class ModuleQueryResponse(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: bytes
    def __init__(self, answer: _Optional[bytes] = ...) -> None: ...

class ModuleQueryBatchRequest(_message.Message):
    __slots__ = ("requests", "min_index", "packed")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedScalarFieldContainer[bytes]
    min_index: int
    packed: bool
    def __init__(self, requests: _Optional[_Iterable[bytes]] = ..., min_index: _Optional[int] = ..., packed: _Optional[bool] = ...) -> None: ...

class ModuleQueryResult(_message.Message):
    __slots__ = ("answer", "error")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    answer: bytes
    error: str
    def __init__(self, answer: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class ModuleQueryBatchResponse(_message.Message):
    __slots__ = ("results", "answers", "errors")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ModuleQueryResult]
    answers: _containers.RepeatedScalarFieldContainer[bytes]
    errors: _containers.ScalarMap[int, str]
    def __init__(self, results: _Optional[_Iterable[_Union[ModuleQueryResult, _Mapping]]] = ..., answers: _Optional[_Iterable[bytes]] = ..., errors: _Optional[_Mapping[int, str]] = ...) -> None: ...

class ModuleSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModuleSnapshotChunk(_message.Message):
    __slots__ = ("data", "index")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    index: int
    def __init__(self, data: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...

class RestoreChunk(_message.Message):
    __slots__ = ("data", "index")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    index: int
    def __init__(self, data: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("instance_id", "applied_index", "packed_apply", "apply_stream")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    PACKED_APPLY_FIELD_NUMBER: _ClassVar[int]
    APPLY_STREAM_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    applied_index: int
    packed_apply: bool
    apply_stream: bool
    def __init__(self, instance_id: _Optional[str] = ..., applied_index: _Optional[int] = ..., packed_apply: _Optional[bool] = ..., apply_stream: _Optional[bool] = ...) -> None: ...
