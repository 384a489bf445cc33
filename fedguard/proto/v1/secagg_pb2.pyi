from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggParams(_message.Message):
    __slots__ = ("run", "server_round", "cohort", "degree", "threshold", "clip_range", "bits", "weight_cap", "ring_bits", "graph_seed", "names", "max_colluding")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_CAP_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_COLLUDING_FIELD_NUMBER: _ClassVar[int]
    run: str
    server_round: int
    cohort: int
    degree: int
    threshold: int
    clip_range: float
    bits: int
    weight_cap: int
    ring_bits: int
    graph_seed: int
    names: _containers.RepeatedScalarFieldContainer[str]
    max_colluding: int
    def __init__(self, run: _Optional[str] = ..., server_round: _Optional[int] = ..., cohort: _Optional[int] = ..., degree: _Optional[int] = ..., threshold: _Optional[int] = ..., clip_range: _Optional[float] = ..., bits: _Optional[int] = ..., weight_cap: _Optional[int] = ..., ring_bits: _Optional[int] = ..., graph_seed: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., max_colluding: _Optional[int] = ...) -> None: ...

class Setup(_message.Message):
    __slots__ = ("params", "slot")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    params: SecAggParams
    slot: int
    def __init__(self, params: _Optional[_Union[SecAggParams, _Mapping]] = ..., slot: _Optional[int] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("slot", "encryption_key", "masking_key", "signature")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    slot: int
    encryption_key: bytes
    masking_key: bytes
    signature: bytes
    def __init__(self, slot: _Optional[int] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class NeighbourKeys(_message.Message):
    __slots__ = ("slot", "encryption_key", "masking_key", "signature")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    slot: int
    encryption_key: bytes
    masking_key: bytes
    signature: bytes
    def __init__(self, slot: _Optional[int] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("neighbours",)
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    neighbours: _containers.RepeatedCompositeFieldContainer[NeighbourKeys]
    def __init__(self, neighbours: _Optional[_Iterable[_Union[NeighbourKeys, _Mapping]]] = ...) -> None: ...

class SealedShare(_message.Message):
    __slots__ = ("sender", "receiver", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    receiver: int
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., receiver: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeysReply(_message.Message):
    __slots__ = ("slot", "shares")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    slot: int
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, slot: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class MaskedInputRequest(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class MaskedInputReply(_message.Message):
    __slots__ = ("slot", "ring_bits", "masked")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    slot: int
    ring_bits: int
    masked: bytes
    def __init__(self, slot: _Optional[int] = ..., ring_bits: _Optional[int] = ..., masked: _Optional[bytes] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("survivors",)
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class ConsistencyReply(_message.Message):
    __slots__ = ("slot", "signature")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    slot: int
    signature: bytes
    def __init__(self, slot: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("survivors", "signatures")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    signatures: _containers.RepeatedCompositeFieldContainer[ConsistencyReply]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ..., signatures: _Optional[_Iterable[_Union[ConsistencyReply, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "holder", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    holder: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., holder: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskReply(_message.Message):
    __slots__ = ("slot", "seed_shares", "key_shares")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    slot: int
    seed_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, slot: _Optional[int] = ..., seed_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class SecAggMessage(_message.Message):
    __slots__ = ("version", "setup", "advertise_keys", "share_keys_request", "share_keys_reply", "masked_input_request", "masked_input_reply", "unmask_request", "unmask_reply", "consistency_request", "consistency_reply")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_REPLY_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_REPLY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REPLY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_REPLY_FIELD_NUMBER: _ClassVar[int]
    version: int
    setup: Setup
    advertise_keys: AdvertiseKeys
    share_keys_request: ShareKeysRequest
    share_keys_reply: ShareKeysReply
    masked_input_request: MaskedInputRequest
    masked_input_reply: MaskedInputReply
    unmask_request: UnmaskRequest
    unmask_reply: UnmaskReply
    consistency_request: ConsistencyRequest
    consistency_reply: ConsistencyReply
    def __init__(self, version: _Optional[int] = ..., setup: _Optional[_Union[Setup, _Mapping]] = ..., advertise_keys: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., share_keys_request: _Optional[_Union[ShareKeysRequest, _Mapping]] = ..., share_keys_reply: _Optional[_Union[ShareKeysReply, _Mapping]] = ..., masked_input_request: _Optional[_Union[MaskedInputRequest, _Mapping]] = ..., masked_input_reply: _Optional[_Union[MaskedInputReply, _Mapping]] = ..., unmask_request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., unmask_reply: _Optional[_Union[UnmaskReply, _Mapping]] = ..., consistency_request: _Optional[_Union[ConsistencyRequest, _Mapping]] = ..., consistency_reply: _Optional[_Union[ConsistencyReply, _Mapping]] = ...) -> None: ...

class HeldShares(_message.Message):
    __slots__ = ("owner", "seed_share", "key_share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARE_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    seed_share: bytes
    key_share: bytes
    def __init__(self, owner: _Optional[int] = ..., seed_share: _Optional[bytes] = ..., key_share: _Optional[bytes] = ...) -> None: ...

class ClientState(_message.Message):
    __slots__ = ("params", "slot", "stage", "encryption_private", "masking_private", "seed", "neighbours", "held", "signed")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    MASKING_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    params: SecAggParams
    slot: int
    stage: int
    encryption_private: bytes
    masking_private: bytes
    seed: bytes
    neighbours: _containers.RepeatedCompositeFieldContainer[NeighbourKeys]
    held: _containers.RepeatedCompositeFieldContainer[HeldShares]
    signed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, params: _Optional[_Union[SecAggParams, _Mapping]] = ..., slot: _Optional[int] = ..., stage: _Optional[int] = ..., encryption_private: _Optional[bytes] = ..., masking_private: _Optional[bytes] = ..., seed: _Optional[bytes] = ..., neighbours: _Optional[_Iterable[_Union[NeighbourKeys, _Mapping]]] = ..., held: _Optional[_Iterable[_Union[HeldShares, _Mapping]]] = ..., signed: _Optional[_Iterable[int]] = ...) -> None: ...
