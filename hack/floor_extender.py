"""The do-nothing extender: the latency floor kvsched is measured against (DESIGN.md).

It does what any cache-mode extender must do and nothing more: read the body, parse the JSON,
one dictionary lookup per node, answer. Same framework (FastAPI on uvicorn) and JSON library
as kvsched, so the difference between the two is kvsched's own work.

Usage: python hack/floor_extender.py --port P --nodes-file names.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def create_floor_app(node_names: list[str]) -> FastAPI:
    known = dict.fromkeys(node_names, True)
    app = FastAPI(docs_url=None, redoc_url=None)

    def names_of(body: bytes) -> list[str]:
        args = orjson.loads(body)
        return [n for n in args["NodeNames"] if known.get(n)]

    @app.post("/filter")
    async def filter_verb(request: Request) -> Response:
        passed = names_of(await request.body())
        result = {
            "Nodes": None,
            "NodeNames": passed,
            "FailedNodes": {},
            "FailedAndUnresolvableNodes": {},
            "Error": "",
        }
        return Response(orjson.dumps(result), media_type="application/json")

    @app.post("/prioritize")
    async def prioritize_verb(request: Request) -> Response:
        scores = [{"Host": n, "Score": 0} for n in names_of(await request.body())]
        return Response(orjson.dumps(scores), media_type="application/json")

    @app.post("/bind")
    async def bind_verb(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(b'{"Error":""}', media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nodes-file", required=True, help="JSON list of node names")
    args = parser.parse_args()
    names = json.loads(Path(args.nodes_file).read_text())
    uvicorn.run(
        create_floor_app(names), host="127.0.0.1", port=args.port, log_config=None, access_log=False
    )


if __name__ == "__main__":
    main()
