"""`sidecar keys create|list|show|revoke|rotate` against the configured store (bootstrapping
Redis-backed deployments). `create` and `rotate` print the raw key once."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from sidecar.auth.hashing import SecretHasher
from sidecar.auth.keyformat import is_key_id
from sidecar.auth.records import KeyNotFound, KeyRecords, KeyRequestError, parse_key_spec
from sidecar.settings import Settings
from sidecar.store.redis import StoreError, connect


def add_keys_parser(sub: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file (or SIDECAR_CONFIG)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    keys = sub.add_parser("keys", help="manage API keys in the configured store")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it once", parents=[common])
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", default="chat,completions,embeddings,models",
                        help="comma-separated: chat, completions, embeddings, models, "
                        "conversations, responses, messages")
    create.add_argument("--limit", action="append", default=[], metavar="RULE",
                        help='a limit rule as JSON, e.g. \'{"window_s": 60, "requests": 100}\'')
    create.add_argument("--expires-in", type=int, dest="expires_in_s")
    create.add_argument("--label", default="")
    create.add_argument("--policy", default="", help="guard policy name ([policies.<name>])")
    create.add_argument("--models", default="",
                        help="comma-separated model names or glob patterns the key may call, "
                        "e.g. gpt-4o-mini,claude-* (default: every model)")
    listing = actions.add_parser("list", help="list keys: a tenant's, or every tenant's",
                                 parents=[common])
    listing.add_argument("--tenant", help="only this tenant's keys (default: every tenant's)")
    for name, text in (("show", "show one key"), ("revoke", "revoke a key on every sidecar")):
        action = actions.add_parser(name, help=text, parents=[common])
        action.add_argument("key_id")
    rotate = actions.add_parser("rotate", help="issue a new key; the old one works for --grace-s",
                                parents=[common])
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-s", type=int, default=0)
    keys.set_defaults(func=handler)


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        sys.stdout.write(human + "\n")


def _line(record: dict[str, Any]) -> str:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record["expires_at"])) \
        if record["expires_at"] else "never"
    return (f"{record['key_id']}  tenant={record['tenant']}  status={record['status']}  "
            f"scopes={','.join(record['scopes'])}  expires={expires}  label={record['label']!r}")


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    store = await connect(settings.store)
    a = settings.auth
    hasher = SecretHasher(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism, 1)
    records = KeyRecords(store, hasher)
    try:
        if args.action == "create":
            try:
                limits = [orjson.loads(rule) for rule in args.limit]
            except orjson.JSONDecodeError:
                raise KeyRequestError(
                    '--limit: expected JSON such as {"window_s": 60, "requests": 100}') from None
            body: dict[str, Any] = {"tenant": args.tenant, "scopes": args.scopes.split(","),
                                    "limits": limits, "label": args.label, "policy": args.policy,
                                    "models": [m.strip() for m in args.models.split(",") if m.strip()]}
            if args.expires_in_s is not None:
                body["expires_in_s"] = args.expires_in_s
            raw_key, record = await records.create(parse_key_spec(body))
            _print(args, {"key": raw_key, **record.public()},
                   f"{raw_key}\n(shown once) {_line(record.public())}")
        elif args.action == "list":
            tenants = (args.tenant,) if args.tenant else await records.tenants()
            found = [r.public() for t in tenants for r in await records.list(t)]
            _print(args, {"data": found}, "\n".join(map(_line, found)) or "(no keys)")
        else:
            if not is_key_id(args.key_id):
                raise KeyNotFound(args.key_id)
            if args.action == "show":
                record = await records.get(args.key_id)
                _print(args, record.public(), _line(record.public()))
            elif args.action == "revoke":
                record = await records.revoke(args.key_id)
                _print(args, record.public(), "revoked: " + _line(record.public()))
            else:
                raw_key, new, old = await records.rotate(args.key_id, args.grace_s)
                _print(args, {"key": raw_key, **new.public(), "previous": old.public()},
                       f"{raw_key}\n(shown once) {_line(new.public())}\nprevious: {_line(old.public())}")
        return 0
    except KeyRequestError as exc:
        sys.stderr.write(f"sidecar keys: {exc}\n")
        return 2
    except KeyNotFound:
        sys.stderr.write("sidecar keys: no key with that id\n")
        return 1
    except StoreError:
        sys.stderr.write("sidecar keys: the store is unavailable\n")
        return 1
    finally:
        hasher.close()
        await store.close()


def run_keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if settings.store.url.startswith("memory:"):
        sys.stderr.write("sidecar keys: the memory:// store lives inside one sidecar process; "
                         "set SIDECAR_STORE_URL to a Redis URL (make run prints a demo key)\n")
        return 2
    return asyncio.run(_run(settings, args))
