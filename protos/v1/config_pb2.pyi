from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SetConfigRequest(_message.Message):
    __slots__ = ("config_json", "author")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    author: str
    def __init__(self, config_json: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfigDocument(_message.Message):
    __slots__ = ("version", "config_json", "author", "created_at", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    config_json: str
    author: str
    created_at: int
    sha256: str
    def __init__(self, version: _Optional[int] = ..., config_json: _Optional[str] = ..., author: _Optional[str] = ..., created_at: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
