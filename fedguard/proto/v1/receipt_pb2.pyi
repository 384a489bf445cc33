from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PrivacyReceipt(_message.Message):
    __slots__ = ("version", "run", "server_round", "dataset_fingerprint", "sample_rate", "noise_multiplier", "steps", "max_grad_norm", "epsilon", "delta", "accountant", "ledger_seq", "ledger_hash", "committed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    DATASET_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HASH_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    version: int
    run: str
    server_round: int
    dataset_fingerprint: str
    sample_rate: float
    noise_multiplier: float
    steps: int
    max_grad_norm: float
    epsilon: float
    delta: float
    accountant: str
    ledger_seq: int
    ledger_hash: str
    committed: bool
    def __init__(self, version: _Optional[int] = ..., run: _Optional[str] = ..., server_round: _Optional[int] = ..., dataset_fingerprint: _Optional[str] = ..., sample_rate: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., steps: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., accountant: _Optional[str] = ..., ledger_seq: _Optional[int] = ..., ledger_hash: _Optional[str] = ..., committed: _Optional[bool] = ...) -> None: ...
