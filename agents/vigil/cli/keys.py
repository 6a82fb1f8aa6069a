"""vigilctl keys: the manager's rule-set signing keys, offline (no manager needed).

  vigilctl keys new PATH    a new Ed25519 key in PATH (0600, never overwritten) and its public
                            half beside it (PATH with suffix .pub); prints the key id
  vigilctl keys id PATH     the key id of a private or public key file

The rotation playbook (playbooks/rotate-signing-key.yml) makes the next key with ``keys new``,
hands its public half to the engines, then puts it in place of the manager's ``signing.key``.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import ruleset


def register(sub) -> None:
    p = sub.add_parser("keys", help="rule-set signing keys: make a new one, show a key's id (offline)")
    ks = p.add_subparsers(dest="keys_cmd", metavar="ACTION")
    ks.required = True
    n = ks.add_parser("new", help="a new signing key and its public half (PATH.pub); prints its id")
    n.add_argument("path", type=Path)
    n.set_defaults(func=cmd_new)
    i = ks.add_parser("id", help="the key id of a private or public key file")
    i.add_argument("path", type=Path)
    i.set_defaults(func=cmd_id)


def cmd_new(args, client) -> None:
    from .vigilctl import UsageError
    path: Path = args.path
    pub_path = path.with_suffix(".pub")
    if pub_path == path:
        raise UsageError(f"{path}: the private key's name must not end in .pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: a signing key is never overwritten") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    ruleset.save_public_key(key.public_key(), pub_path)
    print(ruleset.key_id(key))


def cmd_id(args, client) -> None:
    from .vigilctl import UsageError
    errors = []
    for load in (ruleset.load_public_key, ruleset.load_private_key):
        try:
            print(ruleset.key_id(load(args.path)))
            return
        except ValueError as exc:
            errors.append(str(exc))
    raise UsageError(errors[-1])
