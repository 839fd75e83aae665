"""Robyn's own floor for a Python handler: a sync route answering 302 from a dict, no other work.

Run: python bench/baseline_robyn_dict.py --host 127.0.0.1 --port 8081 --processes 1 --workers 1 --log-level WARN
(Robyn reads --processes/--workers/--log-level itself from sys.argv; --host/--port are ours.)
"""

from __future__ import annotations

import argparse

from robyn import Request, Response, Robyn

# The same slugs as the links bench/compare.py writes to Redis for the other targets.
LINKS = {f"bench-{i}": f"https://shop.example/lp?n={i}" for i in range(10_000)}
NOT_FOUND = Response(status_code=404, headers={"Content-Type": "text/plain"}, description="unknown link\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args, _robyn_args = parser.parse_known_args()

    app = Robyn(__file__)

    @app.get("/c/:slug")
    def click(request: Request) -> Response:
        url = LINKS.get(request.path_params["slug"])
        if url is None:
            return NOT_FOUND
        return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"}, description="")

    @app.get("/health")
    def health(request: Request) -> str:
        return "ok"

    app.start(host=args.host, port=args.port, _check_port=False)


if __name__ == "__main__":
    main()
