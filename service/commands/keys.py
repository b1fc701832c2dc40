"""`prunerd keys NAME`: make a CurveZMQ key pair (NAME.key public, NAME.key_secret secret)."""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("name", help="base name, e.g. server or alice")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite an existing pair")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import zmq
    from zmq.auth import create_certificates

    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    args.dir.mkdir(parents=True, exist_ok=True)
    public, secret = args.dir / f"{args.name}.key", args.dir / f"{args.name}.key_secret"
    if not args.force and (public.exists() or secret.exists()):
        raise RuntimeError(f"{public} or {secret} exists; pass --force to overwrite")
    public_file, secret_file = create_certificates(args.dir, args.name)
    os.chmod(secret_file, 0o600)
    if args.json:
        print(json.dumps({"public": str(public_file), "secret": str(secret_file)}))
    else:
        print(f"public key: {public_file}\nsecret key: {secret_file} (keep it private)")
    return 0
