"""The do-nothing extender: the floor kvsched is measured against (DESIGN.md).

It does what any cache-mode extender must do and nothing more: read the body, parse the JSON,
one dictionary lookup per node, answer. Same framework (FastAPI on uvicorn) and JSON library
as kvsched, so the difference between the two is kvsched's own work.

Two uses:

* hack/bench_extender.py (latency of filter + prioritize): `--nodes-file` names the nodes it
  knows (the cache a cache-mode extender keeps); its bind only parses.
* hack/bench_scheduler.py (a real kube-scheduler's throughput): without `--nodes-file` filter
  passes every node it is sent and prioritize scores them all 0. With `--kubeconfig`, bind
  creates the pods/binding through the same client kvsched binds with
  (scheduler.state.kube.KubeApi, in worker threads, as many at once as kvsched allows), so a
  profile whose configuration has a bindVerb pays for the same kind of bind kvsched pays for.

Usage: python hack/floor_extender.py --port P [--nodes-file names.json] [--kubeconfig K]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.state.kube import API_CONNECTIONS, KubeApi, KubeError

JSON = "application/json"


def create_floor_app(node_names: list[str] | None, api: KubeApi | None = None) -> FastAPI:
    known = dict.fromkeys(node_names, True) if node_names is not None else None
    app = FastAPI(docs_url=None, redoc_url=None)
    bind_slots = anyio.CapacityLimiter(API_CONNECTIONS)

    def names_of(body: bytes) -> list[str]:
        args = orjson.loads(body)
        names: list[str] = args["NodeNames"]
        if known is None:
            return names
        return [n for n in names if known.get(n)]

    def bind(args: dict[str, str]) -> bytes:
        assert api is not None
        try:
            api.bind_pod(args["PodNamespace"], args["PodName"], args["PodUID"], args["Node"], {})
        except KubeError as exc:
            return orjson.dumps({"Error": str(exc)})
        return b'{"Error":""}'

    @app.post("/filter")
    async def filter_verb(request: Request) -> Response:
        passed = names_of(await request.body())
        result: dict[str, object] = {
            "Nodes": None,
            "NodeNames": passed,
            "FailedNodes": {},
            "FailedAndUnresolvableNodes": {},
            "Error": "",
        }
        return Response(orjson.dumps(result), media_type=JSON)

    @app.post("/prioritize")
    async def prioritize_verb(request: Request) -> Response:
        scores = [{"Host": n, "Score": 0} for n in names_of(await request.body())]
        return Response(orjson.dumps(scores), media_type=JSON)

    @app.post("/bind")
    async def bind_verb(request: Request) -> Response:
        args = orjson.loads(await request.body())
        if api is None:
            return Response(b'{"Error":""}', media_type=JSON)
        answer = await anyio.to_thread.run_sync(bind, args, limiter=bind_slots)
        return Response(answer, media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--nodes-file", help="JSON list of node names (default: pass every node sent)"
    )
    parser.add_argument("--kubeconfig", help="bind through the API server (default: parse only)")
    args = parser.parse_args()
    names = json.loads(Path(args.nodes_file).read_text()) if args.nodes_file else None
    api = KubeApi.connect(args.kubeconfig) if args.kubeconfig else None
    uvicorn.run(
        create_floor_app(names, api),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
