"""Overload by long documents: how many requests a running server answers while many clients send it more work
than it can finish within its deadline.

Each of ``--clients`` threads sends 64 texts of 10,000 characters (the request limits' maximum) back to back for
``--seconds`` without backing off, against the URL of a running `tlp serve`. One request alone first gives the
server's service time, the baseline the goodput is read against. Prints the answers by status, answered
requests per second against one request's alone, the latency of answers and of refusals, and the shed counts
from the server's /metrics.

    .venv/bin/tlp serve --deployment .tlp/deployment.json --port 8801 &
    .venv/bin/python bench/long_request_overload.py http://127.0.0.1:8801
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

SENTENCE = "this product was honestly fine but the battery died after two weeks "
LONG_TEXT = (SENTENCE * (10_000 // len(SENTENCE) + 1))[:10_000]


def drive(url: str, client: int, until: float) -> list[tuple[int, float]]:
    answers = []
    with httpx.Client(timeout=120) as http:
        while time.monotonic() < until:
            started = time.monotonic()
            status = http.post(f"{url}/predict", json={"texts": [LONG_TEXT] * 64, "unit_id": f"u{client}"}).status_code
            answers.append((status, time.monotonic() - started))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="a running server, e.g. http://127.0.0.1:8801")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    started = time.monotonic()
    alone = httpx.post(f"{args.url}/predict", json={"texts": [LONG_TEXT] * 64}, timeout=120)
    alone.raise_for_status()
    service_s = time.monotonic() - started
    until = time.monotonic() + args.seconds
    with ThreadPoolExecutor(args.clients) as pool:
        runs = pool.map(lambda client: drive(args.url, client, until), range(args.clients))
        answers = [answer for run in runs for answer in run]
    statuses = Counter(status for status, _ in answers)
    answered = sorted(seconds for status, seconds in answers if status == 200)
    refused = sorted(seconds for status, seconds in answers if status != 200)
    print(f"one request alone: {service_s:.2f} s ({1 / service_s:.2f} requests/s)")
    print(f"{args.clients} clients for {args.seconds:g} s: {dict(statuses)}")
    print(f"answered: {len(answered) / args.seconds:.2f} requests/s, {len(answered) / args.seconds * service_s:.2f}x "
          "the rate of one request alone")
    if answered:
        print(f"answered latency: median {statistics.median(answered):.2f} s, max {answered[-1]:.2f} s")
    if refused:
        print(f"refused latency: median {statistics.median(refused):.2f} s, max {refused[-1]:.2f} s")
    metrics = httpx.get(f"{args.url}/metrics", timeout=30).text.splitlines()
    print("\n".join(line for line in metrics if line.startswith("tlp_requests_shed_total{")))


if __name__ == "__main__":
    main()
