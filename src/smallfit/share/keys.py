"""The local Ed25519 signing key that signs result bundles.

The key lives in one file (PKCS#8 PEM, unencrypted, mode 0600): ``--key``, else ``$SMALLFIT_KEY``,
else ``$XDG_CONFIG_HOME/smallfit/signing-key.pem`` (``~/.config/smallfit/...``). A key readable
by other users is refused, as ssh refuses one. The public key (32 bytes, hex) travels in every
bundle; its key id is the first 16 hex digits of the public key's SHA-256.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from smallfit.errors import MissingExtraError, SmallfitError
from smallfit.share.canonical import sha256_hex

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def default_key_path() -> Path:
    """``$SMALLFIT_KEY``, else ``$XDG_CONFIG_HOME/smallfit/signing-key.pem``."""
    env = os.environ.get("SMALLFIT_KEY")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "smallfit" / "signing-key.pem"


def _ed25519() -> type[Ed25519PrivateKey]:
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        raise MissingExtraError("cryptography", "share") from None
    return Ed25519PrivateKey


def key_id(public_hex: str) -> str:
    """A short, stable name for a public key: 16 hex digits of its SHA-256."""
    return sha256_hex(bytes.fromhex(public_hex))[:16]


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key and where it came from."""

    path: Path
    private: Ed25519PrivateKey

    @property
    def public_hex(self) -> str:
        """The raw 32-byte public key, hex."""
        from cryptography.hazmat.primitives import serialization

        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw.hex()

    @property
    def key_id(self) -> str:
        """16 hex digits naming the public key."""
        return key_id(self.public_hex)

    def sign(self, message: bytes) -> str:
        """Ed25519 signature of ``message``, hex."""
        return self.private.sign(message).hex()


def generate(path: Path) -> SigningKey:
    """Create a new key at ``path`` (mode 0600, its folder 0700); an existing key is never replaced."""
    from cryptography.hazmat.primitives import serialization

    if path.exists():
        raise SmallfitError(f"a key already exists at {path}; show it with 'smallfit keys', or pass another --key")
    private = _ed25519().generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    except OSError as exc:
        raise SmallfitError(f"cannot write the key file {path}: {exc.strerror}; pass another --key") from None
    return SigningKey(path, private)


def load(path: Path) -> SigningKey:
    """Read the key at ``path``; a one-line error when it is missing, open to others or not a key."""
    from cryptography.hazmat.primitives import serialization

    Ed = _ed25519()
    if not path.is_file():
        raise SmallfitError(f"no signing key at {path}; create one with 'smallfit keys --generate' "
                            "(or pass --key / set SMALLFIT_KEY)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SmallfitError(f"the key file {path} is readable by other users (mode {mode:04o}); "
                            f"run: chmod 600 {path}")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise SmallfitError(f"{path} is not an unencrypted PEM private key ({exc}); "
                            "create a new one with 'smallfit keys --generate --key NEW_PATH'") from None
    if not isinstance(private, Ed):
        raise SmallfitError(f"{path} holds a {type(private).__name__}, not an Ed25519 key; "
                            "create one with 'smallfit keys --generate --key NEW_PATH'")
    return SigningKey(path, private)


def verify_signature(public_hex: str, signature_hex: str, message: bytes) -> bool:
    """Whether ``signature_hex`` is a valid Ed25519 signature of ``message`` by ``public_hex``."""
    _ed25519()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
