"""Is the Hugging Face Hub reachable? Asked once per process, in about a second, before any Hub load.

Without a network ``datasets`` and ``huggingface_hub`` retry every request for minutes per split;
a grid of twenty Hub runs then spends most of an hour failing. One short HTTP probe of the endpoint
(``HF_ENDPOINT``, proxies honoured) tells the three cases apart up front:

* ``offline``: ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set; the libraries read their cache only;
* ``reachable``: the endpoint answered (any HTTP status counts: it is there);
* ``unreachable``: no answer within ``PROBE_SECONDS``; every Hub task fails at once with ``UNREACHABLE``.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from functools import lru_cache

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_SECONDS = 3.0
_TRUE = {"1", "true", "yes", "on"}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def offline_mode() -> bool:
    """The Hub libraries are told to use their local cache only."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@lru_cache(maxsize=4)
def _probe(url: str) -> str | None:
    """None if ``url`` answers over HTTP within PROBE_SECONDS, else why not (one short line)."""
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_SECONDS).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered, with an HTTP status: the Hub is there
        except Exception as e:  # noqa: BLE001 - any failure to get an answer is "unreachable"
            reason = getattr(e, "reason", e)
            outcome.append(f"{type(e).__name__}: {reason}")

    t = threading.Thread(target=ask, daemon=True)  # a DNS lookup ignores the socket timeout
    t.start()
    t.join(PROBE_SECONDS + 1.0)
    return outcome[0] if outcome else f"no answer within {PROBE_SECONDS:g} s"


def unreachable_reason() -> str | None:
    """The paragraph to fail Hub work with, or None when the Hub may be used (reachable or offline mode)."""
    if offline_mode():
        return None
    why = _probe(endpoint())
    if why is None:
        return None
    return (f"the Hugging Face Hub is unreachable ({endpoint()}: {why}), so no dataset or model can be "
            "downloaded and nothing that needs one was started")


UNREACHABLE_FIX = ("set AFBENCH_DATA_DIR (or --data-dir) to an offline mirror in Hub schema, or set HF_HUB_OFFLINE=1 "
                   "to use datasets and models already in the Hugging Face cache, or restore the network")


def reset() -> None:
    """Forget the probe (tests, or a long process whose network changed)."""
    _probe.cache_clear()
