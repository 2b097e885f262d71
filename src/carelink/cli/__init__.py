"""The ``carelink`` command.

Exit codes (each means one thing, never reused):

- 0 success
- 1 an error carelink anticipated (message on stderr, one line)
- 2 usage error (bad arguments, e.g. an unknown resource type or group)
- 3 configuration error (settings, policy, profile or key files, a missing data folder,
  a database URL that is malformed, of an unsupported kind, or cannot be reached)
- 4 a source system could not be read (index build / update), or a source URL answers as
  another kind of system (index build / update, and ``serve`` before it starts)
- 5 the audit trail failed verification (``carelink audit verify``)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from carelink import errors
from carelink.cli.audit import audit
from carelink.cli.codes import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOURCE,
    EXIT_USAGE,
    UsageError,
    fail,
)
from carelink.cli.extract import extract, optout
from carelink.cli.index import index
from carelink.cli.mint import mint
from carelink.cli.parser import parser
from carelink.cli.prepare import db, init
from carelink.cli.serve import serve, simulate
from carelink.storage.unavailable import describe, is_unavailable


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``carelink`` console script."""
    args = parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UsageError as exc:
        fail(f"usage error: {exc}")
        return EXIT_USAGE
    except errors.ConfigError as exc:
        fail(f"configuration error: {exc}")
        return EXIT_CONFIG
    except errors.StorageUnavailable as exc:
        fail(f"configuration error: {exc}")
        return EXIT_CONFIG
    except errors.SourceError as exc:
        fail(f"source error: {exc}")
        return EXIT_SOURCE
    except (errors.CarelinkError, ValueError, OSError) as exc:
        fail(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        # a database cut off mid-command, met by code that reached it other than through
        # ``Database`` (whose ways in say ``StorageUnavailable``): one line, not a traceback
        if not is_unavailable(exc):
            raise
        fail(f"configuration error: the database cannot be used now: {describe(exc)}")
        return EXIT_CONFIG


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        return init()
    if args.command == "db":
        return db(args)
    if args.command == "simulate":
        return simulate(args)
    if args.command == "feed":
        from carelink.feeds.run import listen_until_stopped
        from carelink.offline import feed_keeper
        from carelink.settings import Settings

        settings = Settings.from_env()
        return listen_until_stopped(settings, feed_keeper(settings))
    if args.command == "serve":
        return serve(args)
    if args.command == "index":
        return index(args)
    if args.command == "token":
        return mint(args)
    if args.command == "audit":
        return audit(args)
    if args.command == "extract":
        return extract(args)
    if args.command == "optout":
        return optout(args)
    if args.command == "population":
        from carelink.simulators.export import generate

        report = generate(args.size, args.seed, args.out)
        print(f"wrote {report} to {args.out}")
        return EXIT_OK
    from carelink.demo import run_demo

    return run_demo(
        size=args.size,
        seed=args.seed,
        port=args.port,
        source_port=args.source_port,
        latency_ms=args.latency_ms,
        database=args.database,
    )


if __name__ == "__main__":
    raise SystemExit(main())
