"""Securing the bus: which endpoints are local, CURVE key files, their permissions, ``voxd keygen``.

The daemon binds loopback, ``ipc://`` or ``inproc://`` endpoints freely. Any other endpoint needs
ZeroMQ's CURVE (encryption plus a ZAP allow-list of client public keys) unless the config says
``insecure: true``. Keys live in ZeroMQ's certificate files, as written by
:func:`zmq.auth.create_certificates` (``voxd keygen``): ``NAME.key`` holds the public key and may be
shared; ``NAME.key_secret`` holds both keys and must be readable by its owner only.

Keys are handled as Z85 text (40 characters for 32 bytes), the form ZeroMQ's socket options, its
certificate files and its ZAP handler all use.

The functions here raise :class:`KeyFileError` with a message that names the file; callers turn it
into a config error line (``file:line: output.curve.secret_key_file: ...``) or a CLI error.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from voxd.errors import EX_CANTCREAT, EX_UNAVAILABLE, EX_USAGE, VoxdError

__all__ = [
    "CurveKeys",
    "KeyFileError",
    "generate_keypair",
    "is_local_endpoint",
    "load_keypair_file",
    "load_public_key",
    "load_public_key_dir",
    "require_curve",
]

#: Length of a Z85-encoded CURVE key (32 bytes -> 40 characters).
Z85_KEY_LEN = 40
#: Suffixes of ZeroMQ certificate files (what ``zmq.auth.create_certificates`` writes).
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

_Z85_CHARS = frozenset(z85.Z85CHARS)
_LOCAL_SCHEMES = ("ipc://", "inproc://")
_LOCAL_NAMES = ("localhost",)


class KeyFileError(ValueError):
    """A key file is missing, unreadable, malformed or too open; the message names the file."""


@dataclass(frozen=True)
class CurveKeys:
    """What a CURVE server needs: its key pair and the allow-list of client public keys (all Z85).

    The secret key is left out of ``repr`` so that it never lands in a log line or a traceback.
    """

    public_key: bytes
    secret_key: bytes = field(repr=False)
    allowed_clients: frozenset[bytes] = frozenset()


# ------------------------------------------------------------------------------------ endpoints


def is_local_endpoint(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: ``ipc://`` socket files (whose mode decides who
    may connect), ``inproc://`` and ``tcp://`` on a loopback address (``127.0.0.0/8``, ``[::1]``,
    ``localhost``).

    An abstract ``ipc://@name`` is not local in this sense: it has no file, hence no permissions, so
    every user and every network namespace sharing ours can connect. ``tcp://*:PORT``,
    ``tcp://0.0.0.0:PORT``, ``tcp://[::]:PORT``, other addresses and interface names (``tcp://eth0:PORT``;
    even ``lo``, which the kernel could alias) count as not local either: the rule errs on the side of
    asking for keys.
    """
    if endpoint.startswith("ipc://@"):
        return False
    if endpoint.startswith(_LOCAL_SCHEMES):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name
        return False


# ---------------------------------------------------------------------------------------- keys


def require_curve() -> None:
    """Raise :class:`VoxdError` (EX_UNAVAILABLE) when this libzmq was built without CURVE."""
    if not zmq.has("curve"):
        raise VoxdError(curve_missing_message(), EX_UNAVAILABLE)


def curve_missing_message() -> str:
    """Why CURVE cannot be used here, and what to do about it."""
    return (f"this libzmq ({zmq.zmq_version()}) has no CURVE support: install a pyzmq wheel "
            "(bundles libzmq with CURVE) or a libzmq built with libsodium")


def is_z85_key(text: str | bytes) -> bool:
    """True if ``text`` is a Z85-encoded 32-byte key (40 characters of the Z85 alphabet)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    return len(raw) == Z85_KEY_LEN and set(raw) <= _Z85_CHARS


def load_public_key(entry: str | os.PathLike[str]) -> bytes:
    """A client or server public key from ``entry``: a certificate file (``NAME.key`` or
    ``NAME.key_secret``; only its public key is used) or a Z85 key itself.

    An existing file wins over a string that happens to look like a key. Public keys need no
    permission check. Raises :class:`KeyFileError`.
    """
    text = os.fspath(entry)
    if os.path.isfile(text):
        return _read_certificate(text)[0]
    if is_z85_key(text):
        return text.encode("ascii")
    if os.path.exists(text):
        raise KeyFileError(f"{text}: not a regular file")
    raise KeyFileError(f"{text}: no such file (and not a {Z85_KEY_LEN}-character Z85 public key)")


def load_public_key_dir(directory: str | os.PathLike[str]) -> list[bytes]:
    """The public keys of every ``*.key`` certificate in ``directory`` (sorted by file name), the same
    files :meth:`zmq.auth.base.Authenticator.configure_curve` would read. Raises :class:`KeyFileError`."""
    path = Path(directory)
    # os.path rather than Path.is_dir: pathlib lets some errors through (a name too long: ENAMETOOLONG)
    if not os.path.isdir(path):
        raise KeyFileError(f"{path}: {'not a directory' if os.path.lexists(path) else 'no such directory'}")
    try:
        files = sorted(p for p in path.iterdir() if p.name.endswith(PUBLIC_SUFFIX) and os.path.isfile(p))
    except OSError as e:
        raise KeyFileError(f"{path}: cannot list: {e.strerror or e}") from None
    return [_read_certificate(str(p))[0] for p in files]


def load_keypair_file(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a secret certificate (``NAME.key_secret``).

    The file must be a regular file closed to group and others (``mode & 0o077 == 0``): a secret
    anyone on the machine can read is no secret. The public key is derived from the secret one, and
    a ``public-key`` line that disagrees with it is an error (a hand-edited or mixed-up file).
    Raises :class:`KeyFileError`.
    """
    text = os.fspath(path)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise KeyFileError(f"{text}: no such file") from None
    except OSError as e:
        raise KeyFileError(f"{text}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{text}: not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{text}: secret key file is accessible by group or others (mode {mode:o}); "
                           f"run: chmod 600 {text}")
    public, secret = _read_certificate(text)
    if secret is None:
        raise KeyFileError(f"{text}: no secret-key in this certificate (a public {PUBLIC_SUFFIX} file? "
                           f"use the {SECRET_SUFFIX} file)")
    derived = zmq.curve_public(secret) if zmq.has("curve") else public
    if derived != public:
        raise KeyFileError(f"{text}: public-key does not match secret-key")
    return public, secret


def _read_certificate(path: str) -> tuple[bytes, bytes | None]:
    """``(public, secret or None)`` from a ZeroMQ certificate file, both checked to be Z85 keys."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise KeyFileError(f"{path}: not a ZeroMQ certificate (no public-key line)") from None
    except OSError as e:
        raise KeyFileError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a ZeroMQ certificate (not text)") from None
    for name, key in (("public-key", public), ("secret-key", secret)):
        if key is not None and not is_z85_key(key):
            raise KeyFileError(f"{path}: {name} is not a {Z85_KEY_LEN}-character Z85 key")
    return public, secret


# -------------------------------------------------------------------------------------- keygen


def generate_keypair(out_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path, bytes]:
    """Write a new CURVE key pair as ``OUT_DIR/NAME.key`` (public, mode 644) and
    ``OUT_DIR/NAME.key_secret`` (secret, mode 600); returns both paths and the Z85 public key.

    Never overwrites: an existing file of either name is an error (EX_CANTCREAT), and the check is
    atomic (hard links), so two concurrent runs cannot both win. ``OUT_DIR`` is created (mode 700) if
    missing. Raises :class:`VoxdError`: EX_USAGE for a bad name, EX_CANTCREAT when the files cannot
    be written, EX_UNAVAILABLE without CURVE support.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise VoxdError(f"keygen: --name must be a plain file name, got {name!r}", EX_USAGE)
    require_curve()
    out = Path(out_dir)
    public_path, secret_path = out / f"{name}{PUBLIC_SUFFIX}", out / f"{name}{SECRET_SUFFIX}"
    for p in (public_path, secret_path):
        if os.path.lexists(p):
            raise VoxdError(f"keygen: {p} already exists; not overwriting it (remove it or choose another "
                            "--name)", EX_CANTCREAT)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        # create_certificates writes with the process umask (often 644). Writing into a private
        # (700) scratch directory and tightening the mode there means the secret is never readable
        # by others, not even for a moment; a hard link then puts each file in place, failing if
        # the name was taken meanwhile.
        scratch = tempfile.mkdtemp(prefix=f".{name}.", dir=out)
        try:
            tmp_public, tmp_secret = zmq.auth.create_certificates(scratch, name)
            os.chmod(tmp_secret, 0o600)
            os.chmod(tmp_public, 0o644)
            os.link(tmp_secret, secret_path)
            try:
                os.link(tmp_public, public_path)
            except BaseException:
                os.unlink(secret_path)  # never leave half a pair
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except FileExistsError as e:
        raise VoxdError(f"keygen: {e.filename} already exists; not overwriting it", EX_CANTCREAT) from None
    except OSError as e:
        where = e.filename or out
        raise VoxdError(f"keygen: cannot write {where}: {e.strerror or e}", EX_CANTCREAT) from None
    public, _ = zmq.auth.load_certificate(public_path)
    return public_path, secret_path, public

