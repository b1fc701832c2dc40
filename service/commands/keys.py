"""`prunerd keys NAME`: make a CurveZMQ key pair (NAME.key public, NAME.key_secret secret)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "keys",
        help="make a CurveZMQ key pair",
        description="Write DIR/NAME.key (public: give it to the other side) and DIR/NAME.key_secret "
        "(secret, mode 0600). The daemon uses its .key_secret (server_secret_key) and a directory of "
        "allowed clients' .key files (authorized_keys_dir); clients use the daemon's .key and their own "
        ".key_secret.",
    )
    p.add_argument("name", type=key_name, help="base name, e.g. server or alice")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite an existing pair")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handler)


def key_name(text: str) -> str:
    """A plain file name: the pair is written into --dir, never beside or above it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) or ".." in text:
        raise argparse.ArgumentTypeError(
            f"a key name is letters, digits and . _ - (no path: use --dir), got {text!r}"
        )
    return text


def handler(args: argparse.Namespace) -> int:
    import zmq

    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    args.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_file, secret_file = args.dir / f"{args.name}.key", args.dir / f"{args.name}.key_secret"
    if not args.force and (os.path.lexists(public_file) or os.path.lexists(secret_file)):
        raise RuntimeError(f"{public_file} or {secret_file} exists; pass --force to overwrite")
    public_key, secret_key = zmq.curve_keypair()
    _create(secret_file, _certificate(public_key, secret_key), 0o600)
    _create(public_file, _certificate(public_key, None), 0o644)
    if args.json:
        print(json.dumps({"public": str(public_file), "secret": str(secret_file)}))
    else:
        print(f"public key: {public_file}\nsecret key: {secret_file} (keep it private)")
    return 0


def _create(path: Path, text: str, mode: int) -> None:
    """A new file, ``mode`` from the first byte (O_EXCL: no window in which a secret is 0644;
    O_NOFOLLOW: a symlink planted at the name is not written through)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # --force; unlink removes a link itself, never its target
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _certificate(public: bytes, secret: bytes | None) -> str:
    """The ZeroMQ certificate format zmq.auth.load_certificate reads."""
    lines = ["#   ZeroMQ CURVE certificate (prunerd keys)", "metadata", "curve"]
    lines.append(f'    public-key = "{public.decode()}"')
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"
