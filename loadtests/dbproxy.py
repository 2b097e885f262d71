"""The test suite's database proxy (``tests/support/tcp_proxy.py``), run on its own
for a load test with database faults: the gateway's ``CARELINK_DATABASE_URL`` points
at ``--listen``, and signals to this process play the faults.

    python loadtests/dbproxy.py --listen 25432 --to 127.0.0.1:5432 &
    kill -USR1 <pid>   # freeze: connections stay open, no byte goes through
    kill -HUP <pid>    # kill: every connection cut, the port refuses new ones
    kill -USR2 <pid>   # resume (and listen again after a kill)

Each change is printed with its time, so a run's recovery can be read against it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's tests/

from tests.support.tcp_proxy import TcpProxy  # after the path above


def main() -> None:
    """Proxy until SIGTERM or SIGINT."""
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--listen", type=int, required=True, help="port to listen on (127.0.0.1)")
    args.add_argument("--to", required=True, help="HOST:PORT of the database")
    opts = args.parse_args()
    host, _, port = opts.to.rpartition(":")
    proxy = TcpProxy(host, int(port))
    proxy.start(opts.listen)
    done = threading.Event()
    actions = {
        signal.SIGUSR1: ("freeze", proxy.freeze),
        signal.SIGHUP: ("kill", proxy.kill),
        signal.SIGUSR2: ("resume", proxy.resume),
    }

    def play(signum: int, _frame: object) -> None:
        name, act = actions[signal.Signals(signum)]
        threading.Thread(target=act).start()  # the proxy's calls wait; a handler must not
        print(f"{time.time():.3f} {name}", flush=True)

    for signum in actions:
        signal.signal(signum, play)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"{time.time():.3f} listening on 127.0.0.1:{proxy.port} -> {opts.to}", flush=True)
    done.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
