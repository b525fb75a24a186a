"""ZeroMQ CURVE keys for the log path: gateways (DEALER, clients) to ingest (ROUTER, server).

With QUARRY_ZMQ_CURVE on, every log batch between a gateway and an ingest replica is
encrypted and both ends are authenticated: a gateway knows the ingest server's public key
(so it talks to no impostor), and the ingest replica accepts only the client public keys
in its allow-list (ZAP, pyzmq's AsyncioAuthenticator). A gateway without an allowed key
never completes the handshake; its DEALER, set IMMEDIATE, then refuses to queue, and the
gateway answers osquery with an error, so osquery keeps the batch and retries.

Key files, in pyzmq's certificate format, under zmq_curve_dir (default state_dir/zmq-curve):
    server.key, server.key_secret    the ingest replicas' key pair (gateways need server.key)
    client.key, client.key_secret    the gateways' key pair
    authorized_clients/*.key         the client public keys ingest accepts (re-read every
                                     AUTHORIZED_RELOAD_S, so rotation needs no restart)
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from quarry.runtime.file_writes import write_atomically
from quarry.runtime.settings import Settings
from quarry.state.directory import zmq_curve_dir

log = logging.getLogger(__name__)

SERVER_NAME = "server"
CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized_clients"
AUTHORIZED_RELOAD_S = 10.0


@dataclass(frozen=True)
class CurveKeys:
    """Raw keys one side needs: its own pair, and (clients only) the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes = b""


def ensure_curve_keys(folder: Path) -> list[Path]:
    """The server and client key pairs in folder, the client authorized; the files made."""
    made: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    for name in (SERVER_NAME, CLIENT_NAME):
        if not (folder / f"{name}.key_secret").exists():
            made.extend(create_key_pair(folder, name))
    authorized = folder / AUTHORIZED_DIR / f"{CLIENT_NAME}.key"
    if not authorized.exists():
        made.append(authorize_client(folder, folder / f"{CLIENT_NAME}.key", CLIENT_NAME))
    return made


def create_key_pair(folder: Path, name: str) -> list[Path]:
    """folder/NAME.key (public) and NAME.key_secret (owner-only)."""
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return [Path(public), Path(secret)]


def authorize_client(folder: Path, public_key_file: Path, name: str) -> Path:
    """Put a client's public key into the allow-list as NAME.key.

    Only the public key is written, even when given a .key_secret file, and atomically,
    since ingest re-reads the folder while it runs.
    """
    public, _ = zmq.auth.load_certificate(public_key_file)
    target = folder / AUTHORIZED_DIR / f"{name}.key"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = (
        f"#   ZeroMQ CURVE public key of Quarry gateway {name!r}\n"
        f'curve\n    public-key = "{public.decode()}"\n'
    )
    write_atomically(target, text.encode())
    return target


def server_keys(settings: Settings) -> CurveKeys:
    public, secret = _load_pair(zmq_curve_dir(settings) / f"{SERVER_NAME}.key_secret")
    return CurveKeys(public, secret)


def client_keys(settings: Settings) -> CurveKeys:
    folder = zmq_curve_dir(settings)
    public, secret = _load_pair(folder / f"{CLIENT_NAME}.key_secret")
    server_public, _ = _load(folder / f"{SERVER_NAME}.key")
    return CurveKeys(public, secret, server_public)


def secure_dealer(socket: zmq.Socket, keys: CurveKeys) -> None:
    """Make a DEALER a CURVE client of the server whose public key keys names."""
    socket.curve_serverkey = keys.server_public
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret


def secure_router(socket: zmq.Socket, keys: CurveKeys) -> None:
    """Make a ROUTER a CURVE server (before bind); clients are checked by the authenticator."""
    socket.curve_server = True
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret


def start_authenticator(context: zmq.Context, settings: Settings) -> AsyncioAuthenticator:
    """ZAP handler on context accepting only the allow-listed client keys (in a running loop)."""
    folder = zmq_curve_dir(settings) / AUTHORIZED_DIR
    if not folder.is_dir():
        raise FileNotFoundError(
            f"QUARRY_ZMQ_CURVE is on but {folder} is missing: put the gateways' public keys "
            "there (`quarry curve init` makes them; docs/security.md)"
        )
    authenticator = AsyncioAuthenticator(context, log=logging.getLogger("quarry.zmq_auth"))
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(folder))
    log.info("ZeroMQ CURVE: %d authorized gateway keys", _count_keys(folder))
    return authenticator


async def reload_authorized_clients(
    authenticator: AsyncioAuthenticator, settings: Settings
) -> None:
    """Re-read the allow-list for ever, so keys can be added or removed without a restart."""
    folder = zmq_curve_dir(settings) / AUTHORIZED_DIR
    known = _count_keys(folder)
    while True:
        await asyncio.sleep(AUTHORIZED_RELOAD_S)
        authenticator.configure_curve(domain="*", location=str(folder))
        count = _count_keys(folder)
        if count != known:
            log.info("ZeroMQ CURVE: now %d authorized gateway keys", count)
            known = count


def _count_keys(folder: Path) -> int:
    return len(list(folder.glob("*.key"))) if folder.is_dir() else 0


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(
            f"QUARRY_ZMQ_CURVE is on but {path} is missing "
            "(`quarry curve init` makes the keys; docs/security.md)"
        )
    return zmq.auth.load_certificate(path)


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _load(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key")
    return public, secret
