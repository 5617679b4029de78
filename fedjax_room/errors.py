"""Every error fedjax_room raises on purpose, under one root.

Catch :class:`FedRoomError` to handle anything the room refuses; catch a leaf to
handle one reason. Every message says what went wrong *and* what to do.

Hierarchy::

    FedRoomError
    ├── ConfigError                 bad argument, option or settings file (also a ValueError)
    │   ├── ModelSpecError          unknown layer, bad shape, family mismatch in a model spec
    │   └── PolicyError             a site policy file that cannot be read or is inconsistent
    ├── DataError                   a data file that cannot be loaded (also a ValueError)
    │   ├── SchemaError             missing column, wrong dtype, shape not as declared
    │   └── ModelFileError          an exported model file that is too large, malformed or does not fit its spec
    ├── PrivacyError                accounting / calibration cannot meet what was asked
    │   └── BudgetExceededError     the work would take a site's ledger past its cap
    ├── RefusedError                a party refused work; ``reason`` says which rule, ``party`` who
    │   └── PolicyViolation         a site's policy forbids the requested run or round
    ├── ProtocolError               a malformed, unexpected or out-of-order message
    │   ├── FrameTooLargeError      a frame over the size limit
    │   └── VersionError            the peer speaks another protocol version
    ├── AuthError                   identity could not be proven
    │   ├── UnknownIdentityError    the public key is not enrolled (or was revoked)
    │   ├── BadSignatureError       a signature does not verify
    │   ├── ReplayError             a challenge or message was seen before
    │   └── RoleError               the identity is enrolled with another role
    ├── RoundError                  a round could not complete (too few sites, deadline)
    ├── CryptoError                 secure-aggregation cryptography failed (bad ciphertext, share)
    ├── StateError                  on-disk state is missing, corrupt or from another room
    └── AuditError                  the audit log does not verify; ``index`` names the record
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AuditError",
    "AuthError",
    "BadSignatureError",
    "BudgetExceededError",
    "ConfigError",
    "CryptoError",
    "DataError",
    "FedRoomError",
    "FrameTooLargeError",
    "ModelFileError",
    "ModelSpecError",
    "PolicyError",
    "PolicyViolation",
    "PrivacyError",
    "ProtocolError",
    "RefusedError",
    "ReplayError",
    "RoleError",
    "RoundError",
    "SchemaError",
    "StateError",
    "UnknownIdentityError",
    "VersionError",
    "error_from_dict",
]


class FedRoomError(Exception):
    """Root of every error fedjax_room raises deliberately.

    ``code`` is a stable machine-readable name (used on the wire and in logs).
    """

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """A JSON-able description: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


class ConfigError(FedRoomError, ValueError):
    code = "config"


class ModelSpecError(ConfigError):
    code = "model_spec"


class PolicyError(ConfigError):
    code = "policy"


class DataError(FedRoomError, ValueError):
    code = "data"


class SchemaError(DataError):
    code = "schema"


class ModelFileError(DataError):
    code = "model_file"


class PrivacyError(FedRoomError):
    code = "privacy"


class BudgetExceededError(PrivacyError):
    code = "budget_exceeded"


class RefusedError(FedRoomError):
    """A party refused work. ``party`` is who refused, ``reason`` a short rule name."""

    code = "refused"

    def __init__(self, message: str, *, party: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.party = party
        self.reason = reason

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "party": self.party, "reason": self.reason}


class PolicyViolation(RefusedError):
    code = "policy_violation"


class ProtocolError(FedRoomError):
    code = "protocol"


class FrameTooLargeError(ProtocolError):
    code = "frame_too_large"


class VersionError(ProtocolError):
    code = "version"


class AuthError(FedRoomError):
    code = "auth"


class UnknownIdentityError(AuthError):
    code = "unknown_identity"


class BadSignatureError(AuthError):
    code = "bad_signature"


class ReplayError(AuthError):
    code = "replay"


class RoleError(AuthError):
    code = "wrong_role"


class RoundError(FedRoomError):
    code = "round"


class CryptoError(FedRoomError):
    code = "crypto"


class StateError(FedRoomError):
    code = "state"


class AuditError(FedRoomError):
    """The audit log failed verification; ``index`` is the first bad record (or -1)."""

    code = "audit"

    def __init__(self, message: str, *, index: int = -1) -> None:
        super().__init__(message)
        self.index = index


_BY_CODE: dict[str, type[FedRoomError]] = {}


def _register(cls: type[FedRoomError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(FedRoomError)


def error_from_dict(data: Mapping[str, object]) -> FedRoomError:
    """Rebuild a typed error sent over the wire by :meth:`FedRoomError.to_dict`."""
    cls = _BY_CODE.get(str(data.get("code", "error")), FedRoomError)
    message = str(data.get("message", "unknown error"))
    if issubclass(cls, RefusedError):
        return cls(message, party=str(data.get("party", "")), reason=str(data.get("reason", "")))
    return cls(message)
