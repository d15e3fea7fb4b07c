"""The smallest Starlette + aiohttp proxy: the Python-framework ceiling wardgate is compared with.

No validation, auth, limits, logs or metrics: what is left is uvicorn, Starlette routing and one
pooled aiohttp call. Run by bench/proxy_overhead.py as the `starlette-minimal` target:
    WARDGATE_BENCH_UPSTREAM=http://127.0.0.1:PORT uvicorn minimal_proxy:app --app-dir bench
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ["WARDGATE_BENCH_UPSTREAM"]
session: aiohttp.ClientSession


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    yield
    await session.close()


async def chat_completions(request: Request) -> Response:
    body = await request.body()
    headers = {"content-type": "application/json"}
    async with session.post(UPSTREAM + "/v1/chat/completions", data=body, headers=headers) as upstream:
        return Response(await upstream.read(), status_code=upstream.status, media_type="application/json")


async def models(request: Request) -> Response:
    async with session.get(UPSTREAM + "/v1/models") as upstream:
        return Response(await upstream.read(), status_code=upstream.status, media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ],
    lifespan=lifespan,
)
