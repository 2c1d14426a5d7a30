"""``openspeedy probe ready|live``: container probes that check every model of the repository.

Triton's /v2/health/ready answers for the server, and a model can be unready (unloaded, failed to load,
being reloaded by the watchdog) while it still says 200. The probes ask /v2/models/<model>/ready for each
model folder of the repository instead: the repository index would list them too, but it belongs to the
restricted model-repository protocol, and a probe holds no admin key. Standard library only: a probe runs
every few seconds, so it must start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def repository_models(repository: Path) -> list[str]:
    """The models of a repository: its folders that hold a config.pbtxt."""
    return sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt"))


def _status(url: str, timeout_s: float) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return str(getattr(error, "reason", error))


def http_url(url: str) -> str:
    """``url`` with a scheme: "127.0.0.1:8000" means http://127.0.0.1:8000, as it does for the clients."""
    return (url if "://" in url else f"http://{url}").rstrip("/")


def default_models() -> list[str]:
    """The models every OpenSpeedy repository has, for a probe given no repository (per-GPU copies aside)."""
    from openspeedy.contracts import ALL_MODELS  # numpy with it: only when the probe is told no models

    return sorted(contract.name for contract in ALL_MODELS)


def check(url: str, models: list[str], what: str = "ready", timeout_s: float = 4.0) -> list[str]:
    """What is wrong, one line each; empty when the server is ``what`` (live or ready) and so is every model."""
    base = http_url(url)
    problems = []
    status = _status(f"{base}/v2/health/{what}", timeout_s)
    if isinstance(status, str):  # no HTTP answer at all: the models cannot answer either
        return [f"server not reachable at {base}: {status}"]
    if status != 200:
        problems.append(f"server not {what}: /v2/health/{what} answered {status}")
    if not models:
        problems.append("no model to check: the repository holds no <model>/config.pbtxt")
    for model in models:
        status = _status(f"{base}/v2/models/{urllib.parse.quote(model)}/ready", timeout_s)
        if status != 200:
            problems.append(f"model '{model}' not ready: /v2/models/{model}/ready answered {status}")
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("ready", "live"),
                        help="ready: the server and every model ready (readiness probe); live: the server live and "
                             "every model ready (liveness probe, with a failure threshold that gives the watchdog "
                             "time to reload a model)")
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('OPENSPEEDY_HTTP_PORT', '8000')}",
                        help="the server's HTTP endpoint, http:// optional (default: this machine, "
                             "$OPENSPEEDY_HTTP_PORT or 8000)")
    parser.add_argument("--model-repository", type=Path, default=os.environ.get("OPENSPEEDY_MODEL_REPOSITORY"),
                        help="the repository whose models must be ready (default: $OPENSPEEDY_MODEL_REPOSITORY; "
                             "neither it nor --model: the models every OpenSpeedy repository has)")
    parser.add_argument("--model", action="append", default=[], help="a model to check (repeatable), besides those "
                        "of --model-repository")
    parser.add_argument("--timeout-s", type=float, default=4.0)


def run(args: argparse.Namespace) -> int:
    models = sorted(set(args.model) | set(repository_models(args.model_repository) if args.model_repository else ()))
    if not args.model and not args.model_repository:
        models = default_models()
    problems = check(args.url, models, args.what, args.timeout_s)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.what}: {len(models)} models ready")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openspeedy probe", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
